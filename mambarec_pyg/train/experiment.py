"""One run from a :class:`~mambarec_pyg.config.Config`: load data, build, train.

These are the steps the command line, the examples and the grid search share:

* :func:`load_data` -- the dataset a :class:`~mambarec_pyg.config.DataConfig` names
  (MMRec files under ``root/dataset/`` or a cached synthetic preset);
* :func:`build_model` -- a fresh :class:`~mambarec_pyg.models.mambarec.MambaRec`;
* :func:`run` -- seed, load, build, :class:`~mambarec_pyg.train.trainer.Trainer`,
  with the resolved config written next to the results;
* :func:`load_run` -- the model, data and config back from a checkpoint.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch_geometric.data import HeteroData

from ..config import Config, DataConfig, MambaRecConfig, from_dict
from .checkpoint import load_checkpoint, seed_everything
from .trainer import Trainer, TrainResult

__all__ = ['load_data', 'build_model', 'run', 'load_run', 'ModelFactory']

PathLike = Union[str, os.PathLike]
ModelFactory = Callable[[HeteroData, MambaRecConfig], torch.nn.Module]


def load_data(config: DataConfig) -> HeteroData:
    """The dataset ``config`` names, with only the requested modalities."""
    if config.dataset is not None:
        from ..data.mmrec import load_mmrec
        return load_mmrec(config.root, config.dataset, modalities=config.modalities)
    from ..data.synthetic import synthetic_dataset
    data = synthetic_dataset(config.synthetic, seed=config.synthetic_seed)
    if config.modalities is not None:
        data = select_modalities(data, config.modalities)
    return data


def select_modalities(data: HeteroData, modalities) -> HeteroData:
    """A shallow copy of ``data`` keeping only ``modalities`` (in that order)."""
    available = tuple(getattr(data, 'modalities', ()) or ())
    missing = [m for m in modalities if m not in available]
    if missing:
        from ..data.errors import DataError
        raise DataError(f"data.modalities: {missing[0]!r} is not a modality of "
                        f"{getattr(data, 'name', 'the dataset')} (available: "
                        f"{', '.join(available)})")
    out = data.__copy__()
    for m in available:
        if m not in modalities:
            del out['item'][m]
    out.modalities = tuple(modalities)
    return out


def build_model(data: HeteroData, config: MambaRecConfig,
                cache_dir: Optional[PathLike] = None) -> torch.nn.Module:
    """A freshly initialised MambaRec for ``data``."""
    from ..models.mambarec import MambaRec
    return MambaRec(data, config=config, cache_dir=cache_dir)


def data_spec(config: DataConfig) -> Dict[str, Any]:
    """``config`` as a dict with ``root`` made absolute, so a checkpoint can find the
    data again from any working directory."""
    from ..config import to_dict
    spec = to_dict(config)
    if config.dataset is not None:
        spec['root'] = str(Path(config.root).resolve())
    return spec


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
    ``output_dir/config.yaml``.
    """
    if data is None:
        data = load_data(config.data)
    seed_everything(config.train.seed)
    factory = model_factory or build_model
    model = factory(data, config.model)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        config.to_yaml(Path(output_dir) / 'config.yaml')
    trainer = Trainer(model, data, config, output_dir, resume=resume, quiet=quiet,
                      callbacks=callbacks, data_spec=data_spec(config.data))
    return trainer.fit()


def load_run(checkpoint: PathLike, device: Union[str, torch.device, None] = 'cpu',
             data: Optional[HeteroData] = None,
             model_factory: Optional[ModelFactory] = None,
             ) -> Tuple[torch.nn.Module, HeteroData, Config]:
    """Rebuild ``(model, data, config)`` from a checkpoint written by a run.

    The data are loaded again from the location recorded in the checkpoint (an
    absolute MMRec root, or the synthetic preset and seed) unless ``data`` is given.
    """
    state = load_checkpoint(checkpoint)
    if not state.get('config'):
        raise ValueError(f'{checkpoint}: the checkpoint records no full config (it was '
                         f'written by a Trainer given only a TrainConfig); rebuild the '
                         f'model in Python and load its state_dict')
    config = Config.from_dict(state['config'])
    if data is None:
        spec = state.get('data') or {}
        data_cfg = from_dict(DataConfig, spec) if spec else config.data
        data = load_data(data_cfg)
    factory = model_factory or build_model
    model = factory(data, config.model)
    model.load_state_dict(state['model'])
    if device is not None:
        from .evaluate import resolve_device
        model.to(resolve_device(device))
    model.eval()
    return model, data, config
