"""The dataset a :class:`~mambarec_pyg.config.DataConfig` names: the one loader.

Every entry point that starts from a configuration (the command line, experiments,
the examples, checkpoints) loads data here: an MMRec directory ``root/dataset/`` when
``dataset`` is set, otherwise the synthetic preset ``synthetic`` written to the cache
and read back through the same MMRec loader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from torch_geometric.data import HeteroData

from ..config import DataConfig, to_dict
from .features import FeatureReduction
from .knn import KNNBackend
from .mmrec import load_mmrec
from .synthetic import synthetic_dataset

__all__ = ['load_dataset', 'data_spec']


def load_dataset(config: DataConfig, verbose: bool = False) -> HeteroData:
    """Load the dataset described by ``config`` (``dataset`` wins over
    ``synthetic``), restricted to ``config.modalities`` when given.

    Features are stored in ``config.feature_dtype`` and, with
    ``config.feature_dim``, reduced by PCA
    (:class:`~mambarec_pyg.data.features.FeatureReduction`). A kNN backend other
    than exact (``config.knn_backend``) is recorded as
    ``data.knn_backend``, where :class:`~mambarec_pyg.data.ItemKNN` finds it."""
    if config.dataset is not None:
        data = load_mmrec(config.root, config.dataset, modalities=config.modalities,
                          verbose=verbose, feature_dtype=config.feature_dtype)
    else:
        data = synthetic_dataset(config.synthetic, seed=config.synthetic_seed,
                                 modalities=config.modalities, verbose=verbose,
                                 feature_dtype=config.feature_dtype,
                                 image_dim=config.synthetic_image_dim,
                                 text_dim=config.synthetic_text_dim)
    if config.feature_dim:
        data = FeatureReduction(config.feature_dim)(data)
    backend = KNNBackend.from_config(config)
    if not backend.exact:
        data.knn_backend = backend
    return data


def data_spec(config: DataConfig, data: Optional[HeteroData] = None
              ) -> Dict[str, Any]:
    """``config`` as a dict with ``root`` made absolute, so a checkpoint can find the
    data again from any working directory.

    With ``data`` (what ``config`` loaded), ``modalities`` is the list of modalities
    the data actually hold (``config.modalities = None`` means "every feature file
    found"), so a run records what it trained on and reloads exactly that.
    """
    spec = to_dict(config)
    if config.dataset is not None:
        spec['root'] = str(Path(config.root).resolve())
    if data is not None:
        spec['modalities'] = list(getattr(data, 'modalities', None) or ())
    return spec
