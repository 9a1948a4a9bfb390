"""Small helpers shared across the package: names, devices, progress, seeding.

* :func:`did_you_mean` -- the one "did you mean" hint of every error message;
* :func:`resolve_device` -- ``'auto'`` / ``'cpu'`` / ``'cuda[:N]'`` to a device;
* :func:`progress` -- a :mod:`tqdm` bar that shows only where someone watches;
* :func:`seed_everything` -- :func:`torch_geometric.seed_everything` (Python, NumPy,
  torch on every device);
* :func:`cached_on` -- a value computed once per data object (weakly referenced, so
  it goes with the object);
* :func:`eval_view` -- a module in eval mode without changing the module (serving
  from several threads).
"""
from __future__ import annotations

import difflib
import sys
import weakref
from typing import Any, Callable, Dict, Hashable, Iterable, Tuple, Union

from .errors import ConfigError

__all__ = ['did_you_mean', 'resolve_device', 'interactive', 'progress',
           'seed_everything', 'cached_on', 'eval_view']


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``''``.

    Close spellings (:func:`difflib.get_close_matches`) first, then a
    case-insensitive match (``'userid'`` -> ``'userID'``).
    """
    candidates = [str(c) for c in candidates]
    close = difflib.get_close_matches(str(name), candidates, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        if str(name).lower() in lowered:
            close = [lowered[str(name).lower()]]
    return f"; did you mean '{close[0]}'?" if close else ''


def resolve_device(device: Any = 'auto'):
    """``'auto'``/``None`` -> CUDA when present, else CPU; anything else must be a
    usable device (``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a :class:`torch.device`)."""
    import torch

    if device is None or str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                          f"{device!r}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not "
                          f"available; use 'cpu' or 'auto'")
    return device


def interactive() -> bool:
    """Whether a progress bar has a viewer: a terminal on stderr, or a notebook."""
    isatty = getattr(sys.stderr, 'isatty', None)
    return bool(isatty and isatty()) or 'ipykernel' in sys.modules


class _NoBar:
    """What :func:`progress` returns when nobody watches: every call is a no-op."""

    n = 0

    def __init__(self, iterable=None):
        self._iterable = iterable

    def __iter__(self):
        return iter(self._iterable if self._iterable is not None else ())

    def update(self, *args, **kwargs) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_description(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(iterable=None, *, enabled: bool = True, **kwargs):
    """A :class:`tqdm.auto.tqdm` bar when ``enabled`` and a terminal or notebook
    watches (not in a log file, where the epoch lines say the same), else a no-op
    bar with the same methods."""
    if not enabled or not interactive():
        return _NoBar(iterable)
    from tqdm.auto import tqdm
    kwargs.setdefault('dynamic_ncols', True)
    return tqdm(iterable, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) generators
    (:func:`torch_geometric.seed_everything`)."""
    import torch_geometric
    torch_geometric.seed_everything(int(seed))


# One dictionary of cached values per live object, keyed by id() and guarded by a
# weak reference (HeteroData is unhashable, so it cannot key a WeakKeyDictionary).
_CACHE: Dict[int, Tuple['weakref.ref', Dict[Hashable, Tuple[Any, Any]]]] = {}


def cached_on(obj: Any, key: Hashable, build: Callable[[], Any],
              fingerprint: Any = None) -> Any:
    """``build()`` once per ``(obj, key)``; rebuilt when ``fingerprint`` changes.

    The cache holds ``obj`` weakly: the entries go when ``obj`` is collected. Objects
    that cannot be weakly referenced are not cached.
    """
    entry = _CACHE.get(id(obj))
    if entry is None or entry[0]() is not obj:
        try:
            ref = weakref.ref(obj)
        except TypeError:
            return build()
        entry = (ref, {})
        _CACHE[id(obj)] = entry
        weakref.finalize(obj, _CACHE.pop, id(obj), None)
    values = entry[1]
    hit = values.get(key)
    if hit is None or hit[0] != fingerprint:
        hit = (fingerprint, build())
        values[key] = hit
    return hit[1]


def tensor_fingerprint(t) -> Union[None, Tuple[Any, ...]]:
    """Identity of a tensor's current content: storage, version counter and shape
    (changes when the tensor is replaced or modified in place)."""
    if t is None:
        return None
    return (t.data_ptr(), t._version, tuple(t.shape), str(t.device))


def eval_view(module):
    """``module`` in eval mode, without changing ``module``: a shallow copy of its
    tree of submodules whose every ``training`` flag is ``False``, sharing the
    parameters, buffers and other attributes (nothing is copied but the module
    objects and their registries).

    ``module.eval()`` flips a flag on the shared module, so two threads serving from
    the same model (or one serving while the model is in training mode) would see
    each other's mode: dropout, sampled noise or edges and BatchNorm batch statistics
    in some of their calls. A view computes exactly what ``module.eval()`` would,
    and what a forward pass stores on its modules (e.g. attention weights kept for
    the next call) lands on the view, not on the model. Build one per call: the
    view shares the module's tensors, so later updates of the weights show, but a
    submodule or buffer registered on the module afterwards does not.
    """
    view = object.__new__(type(module))
    state = dict(module.__dict__)
    state['training'] = False
    state['_parameters'] = dict(module._parameters)
    state['_buffers'] = dict(module._buffers)
    state['_non_persistent_buffers_set'] = set(module._non_persistent_buffers_set)
    state['_modules'] = {name: None if child is None else eval_view(child)
                         for name, child in module._modules.items()}
    view.__dict__.update(state)
    return view
