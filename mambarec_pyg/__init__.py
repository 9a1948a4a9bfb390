"""mambarec_pyg: MambaRec (CIKM 2025) multimodal recommendation on PyTorch Geometric,
with the baselines of its comparison on one interface.

The public API::

    from mambarec_pyg import MambaRec, load_mmrec, make_synthetic, Trainer, evaluate
    from mambarec_pyg import Recommender, register, get_model_class, list_models

Names are imported on first use, so ``import mambarec_pyg`` stays cheap.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# OpenMP threads that spin while they wait for each other collapse training when
# another process uses the cores: on 2 cores with other work running, a `tiny` epoch
# took 0.7-3 s with 2 spinning threads and 0.06-0.2 s with them waiting passively
# (benchmarks/threads.py). The policy is read when torch loads its OpenMP runtime,
# so it is set here, before torch is imported, unless the environment already says.
OMP_POLICY_APPLIED = 'torch' not in sys.modules or 'OMP_WAIT_POLICY' in os.environ
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

__version__ = '0.1.0'

_EXPORTS = {
    'MambaRec': 'mambarec_pyg.models.mambarec',
    'MambaRecConfig': 'mambarec_pyg.models.mambarec',
    'Popularity': 'mambarec_pyg.models.popularity',
    'Recommender': 'mambarec_pyg.models.base',
    'register': 'mambarec_pyg.models.registry',
    'get_model_class': 'mambarec_pyg.models.registry',
    'list_models': 'mambarec_pyg.models.registry',
    'load_dataset': 'mambarec_pyg.data.dataset',
    'synthetic_dataset': 'mambarec_pyg.data.synthetic',
    'run': 'mambarec_pyg.train.experiment',
    'load_run': 'mambarec_pyg.train.experiment',
    'ModelConfig': 'mambarec_pyg.config',
    'load_mmrec': 'mambarec_pyg.data.mmrec',
    'write_mmrec': 'mambarec_pyg.data.mmrec',
    'make_synthetic': 'mambarec_pyg.data.synthetic',
    'Trainer': 'mambarec_pyg.train.trainer',
    'evaluate': 'mambarec_pyg.train.evaluate',
    'Config': 'mambarec_pyg.config',
    'DataConfig': 'mambarec_pyg.config',
    'TrainConfig': 'mambarec_pyg.config',
}

__all__ = sorted(_EXPORTS) + ['__version__']


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
