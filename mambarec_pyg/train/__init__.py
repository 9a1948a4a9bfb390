"""Training and evaluation under the MMRec protocol (docs/reference.md §1).

* :class:`Trainer` -- BPR training with Adam, per-epoch validation, early stopping,
  checkpoints and exact resumption;
* :func:`mambarec_pyg.evaluate` (``train.evaluate.evaluate``) / :class:`Evaluator` --
  full-ranking Recall, NDCG, Precision and MAP
  at every K; :class:`Popularity` -- the most-popular baseline;
* :func:`grid_search` -- the paper's MMD grid, selected on the validation split;
* :func:`run` / :func:`load_run` -- one run from a :class:`~mambarec_pyg.config.Config`,
  and the model back from its checkpoint.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'Trainer': '.trainer',
    'TrainResult': '.trainer',
    'TrainingDivergedError': '.trainer',
    'make_optimizer': '.trainer',
    'Evaluator': '.evaluate',
    'recommend': '.evaluate',
    'Popularity': '.evaluate',
    'grid_search': '.search',
    'SearchResult': '.search',
    'run': '.experiment',
    'load_run': '.experiment',
    'load_data': '.experiment',
    'build_model': '.experiment',
    'seed_everything': '.checkpoint',
    'save_checkpoint': '.checkpoint',
    'load_checkpoint': '.checkpoint',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
