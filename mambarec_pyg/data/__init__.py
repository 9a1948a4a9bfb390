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
* :class:`UserItemNorm`, :class:`ItemKNN`, :class:`UserCooccurrence`,
  :func:`apply_transforms` -- PyG transforms
  that put the derived graphs on the data (cached in the dataset's processed
  directory); :func:`normalized_adjacency`, :func:`item_item_graph` -- the same graphs
  as sparse matrices;
* :func:`training_index` -- the training pairs indexed once (sampler, graphs,
  evaluation, ``recommend``); :func:`sample_negatives` -- BPR negatives.

Every dataset has node types ``'user'`` and ``'item'`` and the edge type :data:`UI`.
"""
from .amazon import prepare_amazon
from .dataset import data_spec, load_dataset
from .errors import DataError, DataWarning
from .graphs import item_item_graph, normalized_adjacency
from .index import UI, TrainingIndex, training_index
from .mmrec import load_mmrec, split_labels, write_mmrec
from .sampling import BPRBatch, TrainingPairs, sample_negatives
from .transforms import (ItemKNN, UserCooccurrence, UserItemNorm, apply_transforms,
                         cooccurrence_relation, knn_relation)
from .summary import DatasetSummary, summarize
from .synthetic import PRESETS, SyntheticPreset, make_synthetic, synthetic_dataset

__all__ = sorted([
    'UI', 'DataError', 'DataWarning', 'load_mmrec', 'write_mmrec', 'load_dataset',
    'summarize', 'DatasetSummary', 'make_synthetic', 'synthetic_dataset', 'PRESETS',
    'SyntheticPreset', 'prepare_amazon', 'split_labels', 'normalized_adjacency',
    'item_item_graph', 'sample_negatives', 'data_spec', 'TrainingIndex',
    'training_index', 'BPRBatch', 'TrainingPairs', 'ItemKNN', 'UserItemNorm',
    'apply_transforms', 'knn_relation', 'UserCooccurrence',
    'cooccurrence_relation'
])
