r"""Feature tables that fit: each modality reduced once, before training, by PCA.

A catalog of a million items with 4096-d image features holds 16 GB of float32 per
modality, and a model that trains the raw tables adds their gradient and Adam state.
:class:`FeatureReduction` replaces every modality wider than ``dim`` by its first
``dim`` principal components, computed in chunks of rows:

.. math::
    \mu = \frac{1}{N}\sum_i x_i, \qquad
    \mathbf{C} = \sum_i (x_i - \mu)(x_i - \mu)^\top, \qquad
    \mathbf{C} = \mathbf{V}\boldsymbol{\Lambda}\mathbf{V}^\top, \qquad
    z_i = (x_i - \mu)\,\mathbf{V}_{:, 1..\mathrm{dim}},

the columns of :math:`\mathbf{V}` ordered by decreasing eigenvalue, each with the sign
that makes its largest-magnitude entry positive (so the result is deterministic).
:math:`\mu` and :math:`\mathbf{C}` are accumulated in float64 over blocks of rows
(a :math:`D \times D` matrix is held, never an :math:`N \times D` float64 copy); the
scores are written in the table's dtype. Work: :math:`O(N D^2)` once.

The reduced tables are cached like the graphs
(:func:`~mambarec_pyg.data.transforms.apply_transforms`): in the dataset's
``processed/`` directory, keyed by ``dim`` and the sha256 of the raw table, written
atomically. The kNN graphs of a reduced dataset are computed from the reduced
features (the graph cache key follows the feature content).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch_geometric.transforms import BaseTransform

from ..io import atomic_path
from .errors import DataError

__all__ = ['FeatureReduction', 'pca_fit', 'pca_transform']

_VERSION = 1
#: Entries of one block of rows (bounds the float64 working memory).
BLOCK_ENTRIES = 1 << 22


def _rows_per_block(d: int) -> int:
    return max(1, BLOCK_ENTRIES // max(1, d))


def pca_fit(x: Tensor, dim: int) -> Tuple[Tensor, Tensor]:
    """``(mean [D], components [D, dim])`` (float64) of the rows of ``x``, computed
    in blocks of rows (see the module docstring for the definition and the sign
    rule)."""
    n, d = x.shape
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= d:
        raise DataError(f'pca_fit: expected 1 <= dim <= D = {d}, got dim={dim!r}')
    step = _rows_per_block(d)
    total = torch.zeros(d, dtype=torch.float64)
    for start in range(0, n, step):
        total += x[start:start + step].double().sum(0)
    mean = total / n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, step):
        block = x[start:start + step].double() - mean
        cov.addmm_(block.t(), block)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    comps = vectors.flip(1)[:, :dim].clone()
    pivot = comps.abs().argmax(dim=0)
    sign = torch.sign(comps[pivot, torch.arange(dim)])
    comps *= torch.where(sign == 0, torch.ones_like(sign), sign)
    return mean, comps


def pca_transform(x: Tensor, mean: Tensor, comps: Tensor,
                  dtype: Optional[torch.dtype] = None) -> Tensor:
    """``(x - mean) @ comps`` in blocks of rows, in ``dtype`` (default ``x``'s)."""
    n, d = x.shape
    out = torch.empty(n, comps.size(1), dtype=dtype or x.dtype)
    step = _rows_per_block(d)
    for start in range(0, n, step):
        out[start:start + step] = (x[start:start + step].double() - mean) @ comps
    return out


class FeatureReduction(BaseTransform):
    """Reduce every modality wider than ``dim`` to its first ``dim`` principal
    components (:func:`pca_fit`), once; narrower modalities are kept as they are.

    Args:
        dim (int): the width of the reduced tables.
        modalities (sequence of str, optional): which modalities (default: all).
        processed_dir (path, optional): where the reduced tables are cached
            (default: ``data.processed_dir`` when the loader set it; none: computed
            in memory).
    """

    def __init__(self, dim: int, modalities: Optional[Sequence[str]] = None,
                 processed_dir=None) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise DataError(f'data.feature_dim: expected a positive integer, got '
                            f'{dim!r}')
        self.dim = dim
        self.modalities = None if modalities is None else tuple(modalities)
        self.processed_dir = processed_dir

    def cache_key(self, x: Tensor) -> str:
        from .transforms import content_hash
        return hashlib.sha256(f'v{_VERSION}|pca|dim={self.dim}|{content_hash(x)}'
                              .encode()).hexdigest()

    def reduce(self, x: Tensor, directory: Optional[Path]) -> Tensor:
        """The reduced table of ``x`` (read from the cache when there)."""
        path = None if directory is None else \
            Path(directory) / f'FeatureReduction-{self.cache_key(x)[:40]}.pt'
        if path is not None and path.is_file():
            try:
                z = torch.load(path, map_location='cpu', weights_only=True)['features']
                if isinstance(z, Tensor) and z.shape == (x.size(0), self.dim) and \
                        z.dtype == x.dtype:
                    return z
            except Exception:  # unreadable or foreign: recompute and overwrite
                pass
        mean, comps = pca_fit(x, self.dim)
        z = pca_transform(x, mean, comps, x.dtype)
        if path is not None:
            try:
                with atomic_path(path) as tmp:
                    torch.save({'features': z, 'dim': self.dim,
                                'version': _VERSION}, tmp)
            except OSError as e:
                warnings.warn(f'could not cache the reduced features in '
                              f'{path.parent} ({e.strerror}); they are computed in '
                              f'memory each time', RuntimeWarning, stacklevel=3)
        return z

    def forward(self, data):
        available = tuple(getattr(data, 'modalities', None) or ())
        mods = available if self.modalities is None else self.modalities
        missing = [m for m in mods if m not in available]
        if missing:
            raise DataError(f'FeatureReduction: modality {missing[0]!r} is not on '
                            f'the data (available: {", ".join(available) or "none"})')
        directory = self.processed_dir or getattr(data, 'processed_dir', None)
        for m in mods:
            x = data['item'][m]
            if x.size(1) > self.dim:
                data['item'][m] = self.reduce(x, directory)
        return data

    def __repr__(self) -> str:
        mods = '' if self.modalities is None else f', modalities={self.modalities}'
        return f'FeatureReduction(dim={self.dim}{mods})'
