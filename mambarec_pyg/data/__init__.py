"""Datasets as :class:`torch_geometric.data.HeteroData`.

* :func:`load_mmrec` / :func:`write_mmrec` -- the MMRec directory format
  (``<name>.inter`` plus one ``<modality>_feat.npy`` per item modality);
* :func:`make_synthetic` / :func:`synthetic_dataset` -- built-in synthetic data with
  planted multimodal structure, from a tiny test set to the sizes of the paper's Amazon
  datasets (:data:`PRESETS`);
* :func:`prepare_amazon` -- one category of the 2014 Amazon data (ratings, metadata,
  image features) written as an MMRec directory, as MMRec made the paper's datasets;
* :func:`load_dataset` -- whichever of the two a :class:`~mambarec_pyg.config.DataConfig`
  names;
* :func:`summarize` -- the dataset's numbers in the shape of the paper's Table 1;
* :func:`normalized_adjacency`, :func:`item_item_graph` -- the graphs built once before
  training; :func:`sample_negatives` -- BPR negatives (imported on first use).

Every dataset has node types ``'user'`` and ``'item'`` and the edge type :data:`UI`.
"""
from __future__ import annotations

import importlib
from typing import Any

from .amazon import prepare_amazon
from .dataset import load_dataset
from .errors import DataError, DataWarning
from .mmrec import UI, load_mmrec, split_labels, write_mmrec
from .summary import DatasetSummary, summarize
from .synthetic import PRESETS, SyntheticPreset, make_synthetic, synthetic_dataset

# Names from modules imported on first use (graph building and sampling pull in more
# of PyG than loading data needs).
_LAZY = {
    'normalized_adjacency': '.graphs',
    'item_item_graph': '.graphs',
    'sample_negatives': '.sampling',
}

__all__ = sorted([
    'UI', 'DataError', 'DataWarning', 'load_mmrec', 'write_mmrec', 'load_dataset',
    'summarize', 'DatasetSummary', 'make_synthetic', 'synthetic_dataset', 'PRESETS',
    'SyntheticPreset', 'prepare_amazon', 'split_labels', *_LAZY
])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
