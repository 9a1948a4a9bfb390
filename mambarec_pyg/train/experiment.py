"""One run from a :class:`~mambarec_pyg.config.Config`: load data, build, train.

These are the steps the command line, the examples, the grid search and the
experiments share, for any registered model:

* :func:`build_model` -- the model ``config.model`` names, freshly initialised, with
  its graphs on the data (cached in the dataset's processed directory);
* :func:`run` -- seed, load, build, :class:`~mambarec_pyg.train.trainer.Trainer`;
* :func:`load_run` -- the model, data and config back from a checkpoint.

The data are loaded by :func:`mambarec_pyg.data.load_dataset`.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Optional, Tuple, Union

import torch
from torch_geometric.data import HeteroData

from ..config import Config, ModelConfig, from_dict
from ..data.dataset import data_spec, load_dataset
from ..data.errors import DataError
from ..data.fingerprint import (DataChangedWarning, data_fingerprint,
                                fingerprint_changes)
from ..errors import CheckpointError, NonFiniteError
from ..utils import eval_view, resolve_device, seed_everything
from .checkpoint import first_nonfinite, load_checkpoint
from .evaluate import check_finite_embeddings
from .trainer import Trainer, TrainResult

__all__ = ['build_model', 'run', 'load_run', 'ModelFactory']

PathLike = Union[str, os.PathLike]
ModelFactory = Callable[[HeteroData, ModelConfig], torch.nn.Module]


def build_model(data: HeteroData, config: ModelConfig) -> torch.nn.Module:
    """A freshly initialised model of the registered class ``config`` belongs to.

    The model's graphs are put on ``data`` first (computed only where missing; cached
    under ``data.processed_dir`` when the loader set it), so the constructor does no
    kNN work on later runs.
    """
    from ..models.registry import get_model_class
    cls = get_model_class(type(config).name)
    return cls(cls.prepare(data, config), config)


def run(config: Config, output_dir: Optional[PathLike] = None, *,
        resume: bool = False, quiet: bool = False,
        data: Optional[HeteroData] = None,
        model_factory: Optional[ModelFactory] = None,
        callbacks=()) -> TrainResult:
    """Train one model as ``config`` says; return the :class:`TrainResult`.

    Seeds everything from ``config.train.seed`` *before* the model is built, so the
    same config gives the same initial weights and the same run. ``data`` skips
    loading (it must be what ``config.data`` names); ``model_factory(data,
    config.model)`` replaces :func:`build_model`. The resolved config is written to
    ``output_dir/config.yaml`` with the run's first checkpoint or results file, so a
    run that stops before then leaves an earlier record in the directory as it was.

    Started by ``torchrun`` with two or more processes (and ``train.distributed``
    ``'auto'``), every process trains its share of each batch
    (:func:`~mambarec_pyg.train.parallel.run_distributed`): rank 0 writes the run
    directory, and every process returns the same result.
    """
    from .distributed import detect_launch, wants_distributed
    launch = detect_launch()
    if wants_distributed(config.train.distributed, launch):
        from .parallel import run_distributed
        return run_distributed(launch, config, output_dir, resume=resume, quiet=quiet,
                               data=data, model_factory=model_factory,
                               callbacks=callbacks)
    if data is None:
        data = load_dataset(config.data)
    seed_everything(config.train.seed)
    factory = model_factory or build_model
    model = factory(data, config.model)
    trainer = Trainer(model, data, config, output_dir, resume=resume, quiet=quiet,
                      callbacks=callbacks, data_spec=data_spec(config.data, data))
    return trainer.fit()


def load_run(checkpoint: PathLike, device: Union[str, torch.device, None] = 'cpu',
             data: Optional[HeteroData] = None,
             model_factory: Optional[ModelFactory] = None,
             trusted: bool = False,
             allow_changed_data: bool = False
             ) -> Tuple[torch.nn.Module, HeteroData, Config]:
    """Rebuild ``(model, data, config)`` from a checkpoint written by a run (any
    registered model; the checkpoint records its name and config).

    The data are loaded again from the location recorded in the checkpoint (an
    absolute MMRec root, or the synthetic preset and seed) unless ``data`` is given.
    ``trusted`` reads checkpoints of older versions (see
    :func:`~mambarec_pyg.train.checkpoint.load_checkpoint`).

    The checks, in order:

    * the weights must be finite, and so must the embeddings they give (a diverged
      run's weights rank arbitrarily): else :class:`CheckpointError`;
    * the data must be those the run was trained on: their fingerprint
      (:mod:`~mambarec_pyg.data.fingerprint`) is compared with the checkpoint's, and
      any difference stops with a :class:`DataError` naming what changed -- or, with
      ``allow_changed_data``, is reported as a
      :class:`~mambarec_pyg.data.fingerprint.DataChangedWarning`. A checkpoint that
      records no fingerprint (written by an older version) gets a
      :class:`DataChangedWarning` saying its data cannot be checked.
    """
    state = load_checkpoint(checkpoint, trusted=trusted)
    bad = first_nonfinite((state.get('model') or {}).items())
    if bad is not None:
        raise CheckpointError(f'{checkpoint}: refused: the weights are not finite '
                              f'(tensor {bad.describe()}); the run that wrote it '
                              f'diverged, and any ranking they give is arbitrary. Train '
                              f'again with a lower learning rate')
    if not state.get('config'):
        raise ValueError(f'{checkpoint}: the checkpoint records no full config (it was '
                         f'written by a Trainer given only a TrainConfig); rebuild the '
                         f'model in Python and load its state_dict')
    config = Config.from_dict(state['config'])
    if data is None:
        from ..config import DataConfig
        spec = state.get('data') or {}
        data_cfg = from_dict(DataConfig, spec) if spec else config.data
        data = load_dataset(data_cfg)
    _check_data(checkpoint, state.get('data_fingerprint'), data, allow_changed_data)
    factory = model_factory or build_model
    model = factory(data, config.model)
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as e:
        raise CheckpointError(f'{checkpoint}: the weights do not fit the model built on '
                              f'these data ({str(e).splitlines()[0]})') from None
    if device is not None:
        model.to(resolve_device(device))
    model.eval()
    view = eval_view(model)
    embed = getattr(view, 'embed', None)
    try:
        with torch.no_grad():
            check_finite_embeddings(*(embed() if callable(embed) else view()))
    except NonFiniteError as e:
        raise CheckpointError(f'{checkpoint}: refused: {e}; the run that wrote it '
                              f'diverged. Train again with a lower learning '
                              f'rate') from None
    return model, data, config


def _check_data(checkpoint: PathLike, recorded, data: HeteroData,
                allow_changed_data: bool) -> None:
    """Compare ``data`` with the fingerprint the checkpoint recorded (see
    :func:`load_run`)."""
    if not isinstance(recorded, dict):
        warnings.warn(f'{checkpoint}: the checkpoint records no data fingerprint (it '
                      f'was written by an older mambarec_pyg version), so it cannot be '
                      f'checked that these are the data it was trained on',
                      DataChangedWarning, stacklevel=3)
        return
    changes = fingerprint_changes(recorded, data_fingerprint(data))
    if changes is None:
        warnings.warn(f'{checkpoint}: the checkpoint\'s data fingerprint is of '
                      f'another version (v{recorded.get("version")}), so it cannot be '
                      f'checked that these are the data it was trained on',
                      DataChangedWarning, stacklevel=3)
        return
    if not changes:
        return
    what = '; '.join(changes)
    if not allow_changed_data:
        raise DataError(f'{checkpoint}: the data are not those the run was trained '
                        f'on ({what}); its metrics and recommendations would describe '
                        f'other data. Use the data it was trained on (--data ROOT if '
                        f'they moved), or pass --allow-changed-data '
                        f'(allow_changed_data=True) to use these anyway')
    warnings.warn(f'{checkpoint}: the data are NOT those the run was trained on '
                  f'({what}); going on because of --allow-changed-data: the results '
                  f'do not describe the data the run was selected on',
                  DataChangedWarning, stacklevel=3)
