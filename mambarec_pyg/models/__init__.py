"""Recommendation models on one interface (:class:`Recommender`), chosen by name.

Built-in models register when their module is imported, which happens on first use
of their name or class (``from mambarec_pyg.models import LightGCN``,
``get_model_class('lightgcn')``); ``mambarec models`` lists them all::

    from mambarec_pyg.models import get_model_class, list_models
    Model = get_model_class('lightgcn')
    model = Model(data, Model.config_class(n_layers=3))
"""
from __future__ import annotations

import importlib
from typing import Any

from ..config import BUILTIN_MODELS
from .base import Recommender, check_data
from .registry import get_config_class, get_model_class, list_models, register

# The built-in models' classes (each with its config, ``<Class>Config``), by the
# module that defines them: imported on first use, so importing one model does not
# import the others.
_CLASSES = {'popularity': 'Popularity', 'bpr': 'BPR', 'lightgcn': 'LightGCN',
            'vbpr': 'VBPR', 'slmrec': 'SLMRec', 'lgmrec': 'LGMRec', 'freedom': 'FREEDOM',
            'bm3': 'BM3', 'mmgcn': 'MMGCN', 'grcn': 'GRCN', 'mgcn': 'MGCN',
            'lattice': 'LATTICE', 'dualgnn': 'DualGNN', 'dragon': 'DRAGON',
            'mvgae': 'MVGAE', 'layergcn': 'LayerGCN', 'selfcf': 'SelfCF',
            'itemknncbf': 'ItemKNNCBF', 'smore': 'SMORE', 'pgl': 'PGL',
            'damrs': 'DAMRS', 'mmgcf': 'MMGCF', 'mambarec': 'MambaRec'}
_EXPORTS = {name: module for module, cls in _CLASSES.items()
            for name in (cls, f'{cls}Config')}
_EXPORTS['MambaRecOutput'] = 'mambarec'

__all__ = ['Recommender', 'register', 'get_model_class', 'get_config_class',
           'list_models', 'check_data', 'MambaRec', 'MambaRecConfig',
           'MambaRecOutput', 'Popularity', 'PopularityConfig', 'BPR', 'BPRConfig',
           'LightGCN', 'LightGCNConfig', 'MGCN', 'MGCNConfig', 'LayerGCN',
           'LayerGCNConfig', 'SelfCF', 'SelfCFConfig',
           'DualGNN', 'DualGNNConfig', 'DRAGON', 'DRAGONConfig',
           'LATTICE', 'LATTICEConfig', 'MVGAE', 'MVGAEConfig',
           'ItemKNNCBF', 'ItemKNNCBFConfig', 'SMORE', 'SMOREConfig', 'PGL', 'PGLConfig',
           'DAMRS', 'DAMRSConfig', 'MMGCF', 'MMGCFConfig']


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f'.{module}', __name__), name)
    elif f'.models.{name}' in BUILTIN_MODELS.values():  # a model's module
        value = importlib.import_module(f'.{name}', __name__)
    else:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
