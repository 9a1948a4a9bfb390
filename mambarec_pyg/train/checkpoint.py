"""Checkpoints and run records: written atomically, complete enough to resume exactly.

A checkpoint is one ``torch.save`` dictionary (format :data:`FORMAT`):

* ``model``, ``optimizer``, ``scheduler``: ``state_dict()`` of each;
* ``rng``: the Python, NumPy and torch (CPU and every CUDA device) generator states
  and the training-pair sampler's :class:`torch.Generator` state;
* ``epoch`` (epochs completed), ``best_epoch``, ``best_value``, ``best_valid``,
  ``best_test``, ``bad_epochs`` (the early-stopping counter), ``history``;
* ``config``: the full :class:`~mambarec_pyg.config.Config` as a dict when known
  (else the :class:`~mambarec_pyg.config.TrainConfig`), and ``data``: what is needed
  to load the same data again (see :func:`mambarec_pyg.train.experiment.load_data`).

Writers go through :func:`mambarec_pyg.io.atomic_path`, so an interrupted write never
replaces a good checkpoint with a partial one.
"""
from __future__ import annotations

import os
import platform
import random
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..io import atomic_path, write_json

__all__ = ['FORMAT', 'save_checkpoint', 'load_checkpoint', 'rng_state',
           'set_rng_state', 'seed_everything', 'environment', 'write_json']

FORMAT = 'mambarec_pyg.checkpoint/1'
PathLike = Union[str, os.PathLike]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(sampler: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Every random state a training run consumes."""
    state = {
        'python': random.getstate(),
        'numpy': np.random.get_state(),
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if sampler is not None:
        state['sampler'] = sampler.get_state()
    return state


def set_rng_state(state: Dict[str, Any],
                  sampler: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    if sampler is not None and state.get('sampler') is not None:
        sampler.set_state(state['sampler'])


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    state = dict(state, format=FORMAT)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: PathLike,
                    map_location: Union[str, torch.device, None] = 'cpu') -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError` for a
    file that is not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    try:
        # Checkpoints hold numpy RNG states and plain containers, so the restricted
        # ``weights_only`` unpickler cannot read them; only load files you trust.
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f'{path}: not a readable checkpoint ({type(e).__name__}: '
                         f'{e})') from None
    if not isinstance(state, dict) or state.get('format') != FORMAT:
        raise ValueError(f'{path}: not a mambarec_pyg checkpoint (expected format '
                         f'{FORMAT!r})')
    return state


def environment(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Versions, device and thread count, for the results file."""
    import torch_geometric
    env = {
        'python': sys.version.split()[0],
        'platform': platform.platform(),
        'torch': torch.__version__,
        'torch_geometric': torch_geometric.__version__,
        'numpy': np.__version__,
        'num_threads': torch.get_num_threads(),
        'cpu_count': os.cpu_count(),
        'cuda_available': torch.cuda.is_available(),
    }
    try:
        from .. import __version__
        env['mambarec_pyg'] = __version__
    except ImportError:  # pragma: no cover
        pass
    if device is not None:
        device = torch.device(device)
        env['device'] = str(device)
        if device.type == 'cuda':
            env['device_name'] = torch.cuda.get_device_name(device)
        else:
            env['device_name'] = platform.processor() or platform.machine() or 'cpu'
    return env
