"""Checkpoints and run records: safe to load, written atomically, complete enough to
resume exactly.

A checkpoint is one ``torch.save`` dictionary (format :data:`FORMAT`) of tensors and
plain containers only -- dicts, lists, tuples, strings, numbers, booleans, ``None``
-- so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``, which
never runs code from the file. A file holding anything else (for example a crafted
pickle) is refused before any of it is executed.

* ``kind``: ``'last'`` (everything needed to resume) or ``'best'`` (the weights of
  the best epoch, for ``evaluate`` / ``recommend``);
* ``model``: the model's ``state_dict()``; ``model_name``: its registered name;
* ``config``: the full :class:`~mambarec_pyg.config.Config` as plain data (the
  model's name and options included), ``data``: how to load the same data again;
* last only: ``optimizer``, ``scheduler`` (``state_dict()`` each), ``rng`` (the
  Python, NumPy and torch generator states as tensors and numbers, and the
  training-pair sampler's), the counters and the history.

Checkpoints written by versions before format 2 held NumPy objects and could only be
read with the unrestricted unpickler; :func:`load_checkpoint` reads them only with
``trusted=True`` (``--trust-checkpoint`` on the command line), for files you made
yourself.
"""
from __future__ import annotations

import os
import pickle
import platform
import random
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..io import atomic_path, write_json
from ..utils import seed_everything

__all__ = ['FORMAT', 'save_checkpoint', 'load_checkpoint', 'rng_state',
           'set_rng_state', 'seed_everything', 'environment', 'write_json',
           'CheckpointError']

FORMAT = 'mambarec_pyg.checkpoint/2'
_LEGACY = ('mambarec_pyg.checkpoint/1', )
_TRUST = ('--trust-checkpoint of mambarec evaluate or recommend (trusted=True in '
          'Python)')
PathLike = Union[str, os.PathLike]


def rng_state(sampler: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """Every random state a training run consumes, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        'python': {'version': int(version),
                   'state': torch.tensor(internal, dtype=torch.int64),
                   'gauss': gauss},
        'numpy': {'name': str(name), 'keys': torch.from_numpy(
            np.asarray(keys, dtype=np.int64)), 'pos': int(pos),
            'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if sampler is not None:
        state['sampler'] = sampler.get_state()
    return state


def set_rng_state(state: Dict[str, Any],
                  sampler: Optional[torch.Generator] = None) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state['python']
    random.setstate((py['version'], tuple(int(v) for v in py['state'].tolist()),
                     py['gauss']))
    npy = state['numpy']
    np.random.set_state((npy['name'], npy['keys'].numpy().astype(np.uint32),
                         npy['pos'], npy['has_gauss'], npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    if sampler is not None and state.get('sampler') is not None:
        sampler.set_state(state['sampler'])


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> Path:
    """``torch.save(state)`` to ``path`` atomically (temporary file + rename).

    Raises :class:`OSError` naming the file when it cannot be written (a full disk
    included); the previous file at ``path`` is then left as it was.
    """
    path = Path(path)
    state = dict(state, format=FORMAT)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as e:
        raise OSError(e.errno, f'{path}: could not write the checkpoint '
                               f'({e.strerror or e}); is the disk full?') from None
    except RuntimeError as e:  # torch's writer reports I/O failures this way
        raise OSError(f'{path}: could not write the checkpoint ({e}); is the disk '
                      f'full?') from None
    return path


def load_checkpoint(path: PathLike,
                    map_location: Union[str, torch.device, None] = 'cpu',
                    trusted: bool = False) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain
    containers only, nothing in it is executed. ``trusted=True`` also reads
    checkpoints of the older format 1 with the unrestricted unpickler -- only for
    files you made yourself.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a readable checkpoint of this library, or
            holds objects that are not allowed (refused before they run).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol
            warnings.filterwarnings('ignore', message='Detected pickle protocol')
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted:
            raise CheckpointError(
                f'{path}: refused: the file holds objects other than tensors and '
                f'plain containers, which could run code when loaded '
                f'({_refusal_reason(e)}); nothing in it was run. A mambarec_pyg '
                f'checkpoint never does; a checkpoint of an older mambarec_pyg '
                f'version that you made yourself can be read with {_TRUST}'
            ) from None
        state = _load_trusted(path, map_location)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f'{path}: not a mambarec_pyg checkpoint (not a '
                                  f'complete torch.save archive)') from None
        raise CheckpointError(f'{path}: not a readable checkpoint '
                              f'({type(e).__name__}: {_first_line(e)})') from None
    if not isinstance(state, dict) or state.get('format') not in (FORMAT, *_LEGACY):
        raise CheckpointError(f'{path}: not a mambarec_pyg checkpoint (expected '
                              f'format {FORMAT!r})')
    if state['format'] in _LEGACY and not trusted:
        raise CheckpointError(f'{path}: a checkpoint of an older mambarec_pyg '
                              f'version; read it with {_TRUST} if you made it '
                              f'yourself')
    if state['format'] in _LEGACY:
        state = _upgrade_legacy(state)
    return state


def _load_trusted(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f'{path}: not a readable checkpoint '
                              f'({type(e).__name__}: {_first_line(e)})') from None


def _upgrade_legacy(state: Dict[str, Any]) -> Dict[str, Any]:
    """A format-1 checkpoint (MambaRec only) in the shape of format 2."""
    state = dict(state)
    state.setdefault('kind', 'last')
    state.setdefault('model_name', 'mambarec')
    config = state.get('config')
    if isinstance(config, dict) and isinstance(config.get('model'), dict):
        model = dict(config['model'])
        model.setdefault('name', 'mambarec')
        train = dict(config.get('train') or {})
        warm = train.pop('cl_warmup_epochs', None)
        if warm:
            model['cl_warmup_epochs'] = warm
        state['config'] = dict(config, model=model, train=train)
    model_state = state.get('model')
    if isinstance(model_state, dict):  # the fusion layers moved into `fusion.`
        renamed = {}
        for key, value in model_state.items():
            if key.startswith(('query.', 'preference_gates.')):
                key = 'fusion.' + key
            renamed[key] = value
        state['model'] = renamed
    rng = state.get('rng')
    if isinstance(rng, dict) and isinstance(rng.get('python'), tuple):
        version, internal, gauss = rng['python']
        name, keys, pos, has_gauss, cached = rng['numpy']
        state['rng'] = dict(rng, python={'version': version, 'state': torch.tensor(
            internal, dtype=torch.int64), 'gauss': gauss}, numpy={
                'name': name, 'keys': torch.from_numpy(np.asarray(keys, np.int64)),
                'pos': pos, 'has_gauss': has_gauss, 'cached_gaussian': cached})
    return state


def _refusal_reason(e: BaseException) -> str:
    """What the safe unpickler refused, without torch's advice to load unsafely."""
    text = str(e)
    found = re.search(r'GLOBAL ([\w.]+)', text)
    if found:
        return f'it refers to {found.group(1)}'
    found = re.search(r'Unsupported operand (\d+)', text)
    if found:
        return f'pickle instruction {found.group(1)} is not allowed'
    return 'the safe loader stopped'


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


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
