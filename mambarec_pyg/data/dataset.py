"""The dataset a :class:`~mambarec_pyg.config.DataConfig` names.

One entry point for code that starts from a configuration (the command line, the
trainer): an MMRec directory ``root/dataset/`` when ``dataset`` is set, otherwise the
synthetic preset ``synthetic`` written to the cache and read back through the same
loader.
"""
from __future__ import annotations

from torch_geometric.data import HeteroData

from ..config import DataConfig
from .mmrec import load_mmrec
from .synthetic import synthetic_dataset


def load_dataset(config: DataConfig, verbose: bool = False) -> HeteroData:
    """Load the dataset described by ``config`` (``dataset`` wins over
    ``synthetic``), restricted to ``config.modalities`` when given."""
    if config.dataset is not None:
        return load_mmrec(config.root, config.dataset, modalities=config.modalities,
                          verbose=verbose)
    return synthetic_dataset(config.synthetic, seed=config.synthetic_seed,
                             modalities=config.modalities, verbose=verbose)
