r"""Backends of the item-item kNN search: exact blocked products, or faiss.

The kNN item-item graphs (:func:`~mambarec_pyg.data.graphs.knn_edges`,
:class:`~mambarec_pyg.data.transforms.ItemKNN`) need each item's :math:`k` most
cosine-similar items. The ``exact`` backend (the default) multiplies blocks of rows
with the whole table: :math:`O(N^2 d)` work, fine up to a few hundred thousand items.
For larger catalogs the search can go through faiss (``faiss-cpu``, the ``scale``
extra):

* ``faiss`` -- exact inner products on the L2-normalised rows (``IndexFlatIP``),
  searched in blocks of queries, on the GPU when faiss has GPU support and a CUDA
  device is present. Same neighbours and weights as ``exact``: the rows whose
  :math:`k`-th and :math:`(k+1)`-th similarities tie (duplicate items, all-zero rows)
  are recomputed by the exact rule (ties go to the lower id); only near-ties that
  faiss's and torch's float32 rounding order differently (about :math:`10^{-7}`) may
  pick another neighbour of (numerically) the same similarity.
* ``hnsw`` -- an approximate HNSW graph (``IndexHNSWFlat``, inner product): options
  ``hnsw_m`` (links per node), ``hnsw_ef_construction`` and ``hnsw_ef_search``
  (candidate lists when building and searching). Built on one thread by default,
  so the graph (and every metric) is the same each run; ``threads > 1`` builds
  faster but not reproducibly (the cache then fixes the graph of the first run).
* ``ivf`` -- an approximate inverted file (``IndexIVFFlat``, inner product):
  ``ivf_nlist`` k-means cells (``0``: :math:`\lceil 4\sqrt{N}\,\rceil`) trained with
  faiss's fixed seed, ``ivf_nprobe`` cells searched per query.

Whatever the backend, the similarity stored for a kept pair is recomputed from the
normalised rows in the features' dtype (faiss works in float32), a row that the
index answered with fewer than :math:`k` items is completed by the exact rule, and
the result has the layout of the exact search (sorted by row, then column).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = ['KNN_BACKENDS', 'KNNBackend', 'import_faiss', 'faiss_neighbours',
           'normalize_rows']

#: The kNN search backends.
KNN_BACKENDS = ('exact', 'faiss', 'hnsw', 'ivf')
#: Entries of one block of rows when similarities are recomputed (bounds memory).
BLOCK_ENTRIES = 1 << 23


def import_faiss():
    """The ``faiss`` module, or an :class:`ImportError` naming the extra."""
    try:
        import faiss
    except ImportError:
        raise ImportError("data.knn_backend faiss / hnsw / ivf needs faiss: "
                          "pip install "
                          "'mambarec-pyg[scale]' (or pip install faiss-cpu), or use "
                          "data.knn_backend exact") from None
    return faiss


@dataclass(frozen=True)
class KNNBackend:
    """How a kNN search is done (see the module docstring); checked when built."""

    #: ``'exact'``, ``'faiss'``, ``'hnsw'`` or ``'ivf'`` (:data:`KNN_BACKENDS`).
    name: str = 'exact'
    #: hnsw: links per node.
    hnsw_m: int = 32
    #: hnsw: candidate list length while building.
    hnsw_ef_construction: int = 200
    #: hnsw: candidate list length of a search (at least k + 1 is used).
    hnsw_ef_search: int = 128
    #: ivf: number of k-means cells; 0: ceil(4 sqrt(N)) (at most N / 39).
    ivf_nlist: int = 0
    #: ivf: cells searched per query.
    ivf_nprobe: int = 32
    #: faiss threads while building an hnsw index (1: reproducible) and searching;
    #: 0 keeps faiss's default for searching and builds hnsw on one thread.
    threads: int = 0
    #: queries per faiss search call.
    block: int = 65536

    def __post_init__(self) -> None:
        if self.name not in KNN_BACKENDS:
            from ..utils import did_you_mean
            raise ConfigError(f'data.knn_backend: expected one of '
                              f"{', '.join(KNN_BACKENDS)}, got {self.name!r}"
                              f'{did_you_mean(str(self.name), KNN_BACKENDS)}')
        for f in fields(self):
            if f.name == 'name':
                continue
            v = getattr(self, f.name)
            low = 0 if f.name in ('ivf_nlist', 'threads') else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f'data.knn_{f.name}: expected an integer >= {low}, '
                                  f'got {v!r}')

    @classmethod
    def from_config(cls, config) -> 'KNNBackend':
        """The backend a :class:`~mambarec_pyg.config.DataConfig` names."""
        return cls(name=config.knn_backend, hnsw_m=config.knn_hnsw_m,
                   hnsw_ef_construction=config.knn_hnsw_ef_construction,
                   hnsw_ef_search=config.knn_hnsw_ef_search,
                   ivf_nlist=config.knn_ivf_nlist, ivf_nprobe=config.knn_ivf_nprobe,
                   threads=config.knn_threads)

    @property
    def exact(self) -> bool:
        return self.name == 'exact'

    def key(self) -> str:
        """The backend and the parameters that change its result (cache keys)."""
        if self.name == 'hnsw':
            threads = f', threads={self.threads}' if self.threads > 1 else ''
            return (f'hnsw(m={self.hnsw_m}, ef_construction='
                    f'{self.hnsw_ef_construction}, ef_search={self.hnsw_ef_search}'
                    f'{threads})')
        if self.name == 'ivf':
            return f'ivf(nlist={self.ivf_nlist}, nprobe={self.ivf_nprobe})'
        return self.name

    def nlist(self, n: int) -> int:
        """The number of IVF cells for ``n`` items."""
        if self.ivf_nlist:
            return max(1, min(self.ivf_nlist, n))
        return max(1, min(math.ceil(4 * math.sqrt(n)), n // 39))


def normalize_rows(x: Tensor) -> Tensor:
    """Rows divided by their L2 norm; an all-zero row stays zero."""
    norm = x.norm(dim=1, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp(min=torch.finfo(x.dtype).tiny),
                       torch.zeros_like(x))


def _build_index(faiss, x32: np.ndarray, backend: KNNBackend):
    n, d = x32.shape
    if backend.name == 'faiss':
        index = faiss.IndexFlatIP(d)
    elif backend.name == 'hnsw':
        index = faiss.IndexHNSWFlat(d, backend.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = backend.hnsw_ef_construction
    else:
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, backend.nlist(n),
                                   faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 1234  # faiss's default, fixed here on purpose
        index.train(x32)
        index.nprobe = backend.ivf_nprobe
    if backend.name != 'hnsw' and hasattr(faiss, 'StandardGpuResources') and \
            torch.cuda.is_available():  # pragma: no cover - needs faiss-gpu
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
        index.referenced_resources = resources
    if backend.name == 'hnsw':
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(max(1, backend.threads))
        try:
            index.add(x32)
        finally:
            faiss.omp_set_num_threads(previous)
    else:
        index.add(x32)
    return index


def faiss_neighbours(xn: Tensor, k: int, backend: KNNBackend,
                     exact_rows) -> Tuple[Tensor, Tensor]:
    """Each row's ``k`` neighbours by ``backend`` among the normalised rows ``xn``.

    ``exact_rows(rows)`` gives ``(cols [len(rows) k], sims)`` by the exact rule for
    the rows that need it (ties at the boundary for ``faiss``, incomplete answers
    for every backend). Returns ``(cols [N, k] sorted per row, sims [N, k])``, the
    similarities recomputed from ``xn`` in its dtype (at least float32).
    """
    faiss = import_faiss()
    n, d = xn.shape
    x32 = np.ascontiguousarray(xn.detach().cpu().numpy(), dtype=np.float32)
    kk = min(n, k + 1)
    previous = faiss.omp_get_max_threads()
    if backend.threads:
        faiss.omp_set_num_threads(backend.threads)
    try:
        index = _build_index(faiss, x32, backend)
        if backend.name == 'hnsw':
            index.hnsw.efSearch = max(backend.hnsw_ef_search, kk)
        labels = np.empty((n, kk), dtype=np.int64)
        scores = np.empty((n, kk), dtype=np.float32)
        for start in range(0, n, backend.block):
            s, i = index.search(x32[start:start + backend.block], kk)
            scores[start:start + len(s)] = s
            labels[start:start + len(s)] = i
    finally:
        faiss.omp_set_num_threads(previous)
    del x32
    redo = (labels[:, :k] < 0).any(axis=1)
    if backend.name == 'faiss' and kk > k:
        redo |= scores[:, k - 1] == scores[:, k]
    cols = torch.from_numpy(np.sort(labels[:, :k], axis=1)).to(xn.device)
    rows = np.flatnonzero(redo)
    if rows.size:
        r = torch.from_numpy(rows).to(xn.device)
        exact_cols, _ = exact_rows(r)
        cols[r] = exact_cols.view(-1, k)
    return cols, _rescore(xn, cols)


def _rescore(xn: Tensor, cols: Tensor) -> Tensor:
    """``sims[i, j] = xn[i] . xn[cols[i, j]]`` in blocks, in xn's dtype (at least
    float32)."""
    n, k = cols.shape
    dtype = torch.promote_types(xn.dtype, torch.float32)
    out = torch.empty(n, k, dtype=dtype, device=xn.device)
    step = max(1, BLOCK_ENTRIES // max(1, k * xn.size(1)))
    for start in range(0, n, step):
        c = cols[start:start + step]
        a = xn[start:start + step].to(dtype)
        out[start:start + step] = torch.einsum('bd,bkd->bk', a, xn[c].to(dtype))
    return out
