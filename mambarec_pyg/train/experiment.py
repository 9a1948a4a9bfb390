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
from typing import Callable, Optional, Tuple, Union

import torch
from torch_geometric.data import HeteroData

from ..config import Config, ModelConfig, from_dict
from ..data.dataset import data_spec, load_dataset
from ..utils import resolve_device, seed_everything
from .checkpoint import load_checkpoint
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
    """
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
             trusted: bool = False) -> Tuple[torch.nn.Module, HeteroData, Config]:
    """Rebuild ``(model, data, config)`` from a checkpoint written by a run (any
    registered model; the checkpoint records its name and config).

    The data are loaded again from the location recorded in the checkpoint (an
    absolute MMRec root, or the synthetic preset and seed) unless ``data`` is given.
    ``trusted`` reads checkpoints of older versions (see
    :func:`~mambarec_pyg.train.checkpoint.load_checkpoint`).
    """
    state = load_checkpoint(checkpoint, trusted=trusted)
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
    factory = model_factory or build_model
    model = factory(data, config.model)
    model.load_state_dict(state['model'])
    if device is not None:
        model.to(resolve_device(device))
    model.eval()
    return model, data, config
