r"""Top-:math:`k` items by inner product with excluded items: the service's indexes.

For query vectors :math:`q_b` (user embeddings, or normalised item embeddings for
item-to-item similarity) and item embeddings :math:`E \in \mathbb{R}^{N \times d}`,
the answer to query :math:`b` is the :math:`k` items :math:`i \notin X_b` with the
largest :math:`s_{bi} = \langle q_b, e_i \rangle`, best first; among equal scores
the smaller item id comes first, so every answer is reproducible. A query with
fewer than :math:`k` candidates gets all of them.

* :class:`ExactIndex` computes :math:`S = Q E^\top` for a block of queries at a time
  (at most ``block_elements`` scores in memory), sets the excluded entries to
  :math:`-\infty`, takes each row's best :math:`k` by a partial sort (a tie group
  cut by the :math:`k`-th place completed by the smallest ids) and sorts them
  (:func:`top_k`).
* :class:`SparseDotIndex` is the exact index of score function ``'sparse_dot'``
  (content-based item kNN): a user's scores :math:`s_{uj} = \sum_{i \in
  \mathcal{I}_u} \mathbf{W}_{ij}` sum the rows of the sparse item-item weights
  :math:`\mathbf{W}` (CSR) over the user's training items, for a block of users at a
  time, then rank as :class:`ExactIndex` does; its item-to-item answers are the
  stored weights of the item's row.
* :class:`FaissIndex` asks faiss (``faiss-cpu``) for the best :math:`k + |X_b|`
  items -- exact with ``IndexFlatIP``, approximate with ``IndexHNSWFlat`` for large
  catalogs -- drops the excluded ones and rescores the rest with numpy, so its scores
  are those of :class:`ExactIndex` (to float32 rounding) and ties are ordered the
  same way.

Why written here rather than with :func:`mambarec_pyg.ranking.rank_items`: the service
runs on numpy arrays without torch, answers lists of varying length, and fixes the
order of tied scores; the tests compare it with ``rank_items`` (through ``mambarec
recommend``) and with a plain loop. Both indexes only read their arrays, so one index
serves concurrent requests.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['ExactIndex', 'SparseDotIndex', 'FaissIndex', 'make_index', 'top_k',
           'import_faiss', 'normalize_rows', 'gather_rows']

#: One query's answer: ``(items int64 [m], scores float32 [m])``, ``m <= k``.
Answer = Tuple[np.ndarray, np.ndarray]


def top_k(scores: np.ndarray, k: int) -> List[Answer]:
    r"""The best ``k`` finite entries of each row of ``scores``, best first, ties by
    smaller column.

    Args:
        scores (ndarray): ``[B, N]`` float scores; ``-inf`` marks an excluded entry.
        k (int): entries per row (``k >= 1``).

    Returns:
        per row, ``(columns, scores)`` of length ``min(k, number of finite
        entries)``.
    """
    if k < 1:
        raise ValueError(f'k: expected k >= 1, got {k}')
    B, N = scores.shape
    if B == 0:
        return []
    kk = min(int(k), N)
    if kk < N:
        cols = np.argpartition(scores, N - kk, axis=1)[:, N - kk:]
    else:
        cols = np.tile(np.arange(N), (B, 1))
    vals = np.take_along_axis(scores, cols, axis=1)
    if kk < N:
        # A tie group that the k-th place cuts: the partition took any of its
        # members; take the smallest ids instead (rare unless scores tie often).
        kth = vals.min(axis=1)
        cut = (scores == kth[:, None]).sum(axis=1) > (vals == kth[:, None]).sum(axis=1)
        for b in np.flatnonzero(cut & (kth != -np.inf)):
            above = np.flatnonzero(scores[b] > kth[b])
            at = np.flatnonzero(scores[b] == kth[b])[:kk - above.size]
            cols[b] = np.concatenate([above, at])
            vals[b] = scores[b, cols[b]]
    order = np.lexsort((cols, -vals), axis=1)  # score descending, then item id
    cols = np.take_along_axis(cols, order, axis=1).astype(np.int64, copy=False)
    vals = np.take_along_axis(vals, order, axis=1)
    counts = (vals != -np.inf).sum(axis=1)  # excluded entries sort last
    return [(cols[b, :counts[b]], vals[b, :counts[b]]) for b in range(B)]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (zero rows stay zero), float32."""
    norm = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _exclusion(exclude: Optional[Sequence[np.ndarray]], start: int,
               end: int) -> Tuple[np.ndarray, np.ndarray]:
    parts = exclude[start:end]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    rows = np.repeat(np.arange(len(parts)), lengths)
    cols = (np.concatenate(parts).astype(np.int64, copy=False) if lengths.sum()
            else np.empty(0, dtype=np.int64))
    return rows, cols


class ExactIndex:
    r"""Exact top-:math:`k` by inner product, a block of queries at a time.

    Args:
        items (ndarray): ``[N, d]`` float32 item vectors (kept by reference; not
            modified).
        block_elements (int): scores computed at a time: a block holds
            ``max(1, block_elements // N)`` queries.

    Shapes:
        - **queries:** ``[B, d]``; **exclude:** ``B`` integer arrays (or ``None``).
        - **output:** ``B`` answers ``(items [m], scores [m])``, ``m <= k``.
    """

    kind = 'exact'

    def __init__(self, items: np.ndarray, block_elements: int = 1 << 22) -> None:
        if items.ndim != 2 or items.shape[0] == 0:
            raise ValueError(f'items: expected a non-empty [N, d] array, got shape '
                             f'{items.shape}')
        self.items = items
        self.block = max(1, int(block_elements) // items.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    def search(self, queries: np.ndarray, k: int,
               exclude: Optional[Sequence[np.ndarray]] = None) -> List[Answer]:
        """The best ``k`` items for each query (see the class docstring)."""
        queries = np.asarray(queries, dtype=np.float32)
        out: List[Answer] = []
        for start in range(0, queries.shape[0], self.block):
            end = min(start + self.block, queries.shape[0])
            scores = queries[start:end] @ self.items.T
            if exclude is not None:
                rows, cols = _exclusion(exclude, start, end)
                scores[rows, cols] = -np.inf
            out.extend(top_k(scores, k))
        return out


def gather_rows(rowptr: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The entries of CSR rows ``rows`` (repeats allowed): ``(position of each entry
    in the CSR arrays, index into rows it belongs to)``."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = rowptr[rows]
    counts = rowptr[rows + 1] - starts
    total = int(counts.sum())
    owner = np.repeat(np.arange(rows.size), counts)
    first = np.cumsum(counts) - counts  # where each row's entries begin in the output
    positions = np.arange(total, dtype=np.int64) - first[owner] + starts[owner]
    return positions, owner


class SparseDotIndex:
    r"""Exact top-:math:`k` of score function ``'sparse_dot'``: a query is a user's
    training items :math:`\mathcal{I}_u`, its scores :math:`s_j = \sum_{i \in
    \mathcal{I}_u} \mathbf{W}_{ij}` (float64 sums, returned as float32).

    Args:
        rowptr, items, values: the item-item weights :math:`\mathbf{W}` ``[N, N]`` as
            CSR (kept by reference; not modified).
        block_elements (int): scores computed at a time (as :class:`ExactIndex`).

    Shapes:
        - **queries:** ``B`` integer arrays (each user's training items);
          **exclude:** ``B`` integer arrays (or ``None``).
        - **output:** ``B`` answers ``(items [m], scores [m])``, ``m <= k``; every
          item not excluded is a candidate (items no training item points to score
          0).
    """

    kind = 'sparse-exact'

    def __init__(self, rowptr: np.ndarray, items: np.ndarray, values: np.ndarray,
                 block_elements: int = 1 << 22) -> None:
        if rowptr.ndim != 1 or rowptr.shape[0] < 2:
            raise ValueError(f'rowptr: expected [N + 1] row pointers with N >= 1, got '
                             f'shape {rowptr.shape}')
        self.rowptr, self.items, self.values = rowptr, items, values
        self.block = max(1, int(block_elements) // self.num_items)

    @property
    def num_items(self) -> int:
        return int(self.rowptr.shape[0] - 1)

    def scores(self, queries: Sequence[np.ndarray]) -> np.ndarray:
        """``[B, N]`` float64 scores of ``queries`` (each a user's training items)."""
        N, B = self.num_items, len(queries)
        lengths = np.fromiter((len(q) for q in queries), dtype=np.int64, count=B)
        rows = (np.concatenate([np.asarray(q, dtype=np.int64) for q in queries])
                if lengths.sum() else np.empty(0, dtype=np.int64))
        positions, owner = gather_rows(self.rowptr, rows)
        query_of = np.repeat(np.arange(B), lengths)[owner]
        flat = query_of * N + self.items[positions]
        return np.bincount(flat, weights=self.values[positions].astype(np.float64),
                           minlength=B * N).reshape(B, N)

    def search(self, queries: Sequence[np.ndarray], k: int,
               exclude: Optional[Sequence[np.ndarray]] = None) -> List[Answer]:
        """The best ``k`` items for each query (see the class docstring)."""
        out: List[Answer] = []
        for start in range(0, len(queries), self.block):
            end = min(start + self.block, len(queries))
            scores = self.scores(queries[start:end]).astype(np.float32)
            if exclude is not None:
                rows, cols = _exclusion(exclude, start, end)
                scores[rows, cols] = -np.inf
            out.extend(top_k(scores, k))
        return out

    def neighbours(self, item: int, k: int) -> Answer:
        r"""The items of row ``item`` of :math:`\mathbf{W}` but ``item`` itself, by
        weight (largest first, ties by smaller id), at most ``k``."""
        if k < 1:
            raise ValueError(f'k: expected k >= 1, got {k}')
        row = slice(int(self.rowptr[item]), int(self.rowptr[item + 1]))
        cand, weights = self.items[row], self.values[row]
        keep = cand != item
        cand, weights = cand[keep], weights[keep]
        order = np.lexsort((cand, -weights))[:k]
        return cand[order].astype(np.int64), weights[order].astype(np.float32)


def import_faiss():
    """The ``faiss`` module, or an :class:`ImportError` saying what to install."""
    try:
        import faiss
    except ImportError:
        raise ImportError("the faiss indexes need faiss-cpu: pip install "
                          "'mambarec-pyg[serve]' (or pip install faiss-cpu), or use "
                          "the exact index (--index exact)") from None
    return faiss


class FaissIndex:
    r"""Top-:math:`k` by inner product through faiss, rescored exactly.

    Args:
        items (ndarray): ``[N, d]`` float32 item vectors.
        kind (str): ``'flat'`` (``IndexFlatIP``: exact) or ``'hnsw'``
            (``IndexHNSWFlat`` with the inner-product metric: approximate).
        hnsw_m, ef_construction, ef_search: the HNSW graph's neighbours per node
            and candidate list lengths when building and searching (a search uses at
            least :math:`k + |X_b|`).

    Shapes: as :class:`ExactIndex`. Concurrent searches are safe (faiss indexes are
    read-only once built; the search width is passed per call).
    """

    def __init__(self, items: np.ndarray, kind: str = 'flat', hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 128) -> None:
        faiss = import_faiss()
        if kind not in ('flat', 'hnsw'):
            raise ValueError(f"kind: expected 'flat' or 'hnsw', got {kind!r}")
        if items.ndim != 2 or items.shape[0] == 0:
            raise ValueError(f'items: expected a non-empty [N, d] array, got shape '
                             f'{items.shape}')
        self._faiss = faiss
        self.items = items
        self.kind = f'faiss-{kind}'
        self.ef_search = int(ef_search)
        data = np.ascontiguousarray(items, dtype=np.float32)
        d = data.shape[1]
        if kind == 'flat':
            self.index = faiss.IndexFlatIP(d)
        else:
            self.index = faiss.IndexHNSWFlat(d, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = int(ef_construction)
        self.index.add(data)

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    def search(self, queries: np.ndarray, k: int,
               exclude: Optional[Sequence[np.ndarray]] = None) -> List[Answer]:
        """The best ``k`` items for each query (see the class docstring)."""
        if k < 1:
            raise ValueError(f'k: expected k >= 1, got {k}')
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.shape[0] == 0:
            return []
        extra = max((len(x) for x in exclude), default=0) if exclude is not None else 0
        want = min(int(k) + extra, self.num_items)
        params = None
        if self.kind == 'faiss-hnsw':
            params = self._faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, want)
        _, found = self.index.search(queries, want, params=params)
        out: List[Answer] = []
        for b in range(queries.shape[0]):
            cand = found[b][found[b] >= 0].astype(np.int64)
            if exclude is not None and len(exclude[b]):
                cand = cand[~np.isin(cand, exclude[b])]
            scores = self.items[cand] @ queries[b]
            order = np.lexsort((cand, -scores))[:k]
            out.append((cand[order], scores[order].astype(np.float32)))
        return out


def make_index(kind: str, items: np.ndarray, *, block_elements: int = 1 << 22,
               hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 128):
    """The index ``kind`` (``'exact'``, ``'faiss-flat'`` or ``'faiss-hnsw'``) over
    ``items``."""
    if kind == 'exact':
        return ExactIndex(items, block_elements)
    if kind in ('faiss-flat', 'faiss-hnsw'):
        return FaissIndex(items, kind.split('-', 1)[1], hnsw_m, ef_construction,
                          ef_search)
    raise ValueError(f"index: expected 'exact', 'faiss-flat' or 'faiss-hnsw', got "
                     f'{kind!r}')
