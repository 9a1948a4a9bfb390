"""Neural-network building blocks of MambaRec: DREAM, the dimensionality reduction,
graph propagation and the training objectives."""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .dream import DREAM
from .losses import InfoNCELoss, MMDLoss, bpr_loss, info_nce, mmd_loss
from .projection import Projection, reduced_width

# Propagation layers live in ``conv.py``; imported on first use.
_CONV_EXPORTS = ('LightGCNPropagation', 'WeightedPropagation')

__all__ = [
    'DREAM',
    'Projection',
    'reduced_width',
    'bpr_loss',
    'info_nce',
    'mmd_loss',
    'InfoNCELoss',
    'MMDLoss',
]
if importlib.util.find_spec(f'{__name__}.conv') is not None:
    __all__ += list(_CONV_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _CONV_EXPORTS:
        value = getattr(importlib.import_module(f'{__name__}.conv'), name)
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
