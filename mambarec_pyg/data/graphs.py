r"""The graphs the models propagate on, as plain functions (no caching, no I/O).

The graph transforms of :mod:`mambarec_pyg.data.transforms` call these to put the
graphs on the data, where the models find them; they are also usable on their own.

* :func:`normalized_adjacency` -- the LightGCN-normalised user-item graph
  :math:`\mathbf{L} = \mathbf{D}^{-1/2} \mathbf{A} \mathbf{D}^{-1/2}` with
  :math:`\mathbf{A} = \begin{bmatrix} 0 & \mathbf{R} \\ \mathbf{R}^\top & 0
  \end{bmatrix}` on the :math:`U + N` nodes (users first, no self loops), and its
  user-item block :math:`\hat{\mathbf{R}}` (entries :math:`1/\sqrt{d_u d_i}`), which
  carries item vectors to users (`"LightGCN" <https://arxiv.org/abs/2002.02126>`_;
  the content view and the item-to-user step of MambaRec).
* :func:`item_item_graph` -- per modality, the normalised k-nearest-neighbour graph of
  the raw item features (the modality views of MambaRec, after
  `"LATTICE" <https://arxiv.org/abs/2104.09036>`_ and
  `"MGCN" <https://arxiv.org/abs/2308.03588>`_), similarity-weighted (MambaRec,
  MGCN) or binary (FREEDOM).
* :func:`knn_edges` / :func:`user_item_weights` -- the same graphs as edge lists
  with weights (what the transforms store on the data);
* :func:`sparse_from_edges` -- a sparse matrix (rows are targets) from an edge list;
* :func:`user_cooccurrence_edges` -- each user's top-:math:`k` co-occurring users in
  the training interactions, with their counts (the user-user graph of
  DualGNN (Wang et al., IEEE TMM 2021) and
  `"DRAGON" <https://arxiv.org/abs/2301.12097>`_);
* :func:`principal_graph_edges` -- PGL's global principal graph, a low-rank rebuild
  of the normalised user-item adjacency from its leading singular vectors;
* :func:`denoised_knn_edges` -- DA-MRS's kNN item graphs on the pairs similar in
  every modality; :func:`binary_graph_weights` -- degree-normalised binary weights.

Both return sparse matrices ready for :func:`torch_geometric.utils.spmm`: a
:class:`torch_sparse.SparseTensor` when ``torch-sparse`` is installed
(``layout='auto'``), a :pytorch:`PyTorch` sparse CSR tensor otherwise. Rows are the
targets of propagation: ``spmm(adj, x)[i] = sum_j adj[i, j] x[j]``.

Normalisation is computed in float64 and cast to ``dtype`` at the end, so the values
are the exact :math:`1/\sqrt{\cdot}` of the degrees rounded once.
"""
from __future__ import annotations

import math
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

import torch_geometric.typing
from torch_geometric.typing import SparseTensor

from .errors import DataError

__all__ = ['normalized_adjacency', 'item_item_graph', 'UserItemGraph', 'to_sparse',
           'knn_edges', 'user_item_weights', 'sparse_from_edges',
           'user_cooccurrence_edges', 'knn_neighbours', 'principal_graph_edges',
           'denoised_knn_edges', 'binary_graph_weights', 'LAYOUTS', 'WEIGHTINGS']

#: Sparse layouts the builders can return.
LAYOUTS = ('auto', 'csr', 'coo', 'sparse_tensor')
#: Edge weights of the kNN graphs before normalisation: the cosine similarity
#: (MambaRec, MGCN, LATTICE) or 1 (FREEDOM).
WEIGHTINGS = ('similarity', 'binary')


class UserItemGraph(NamedTuple):
    """The normalised user-item graph (:func:`normalized_adjacency`)."""

    #: :math:`\mathbf{L}`, ``[U + N, U + N]``, symmetric, users first.
    adj: Union[Tensor, SparseTensor]
    #: :math:`\hat{\mathbf{R}}`, ``[U, N]``, the user-item block of ``adj``.
    r_hat: Union[Tensor, SparseTensor]


def to_sparse(row: Tensor, col: Tensor, value: Tensor, size: tuple,
              layout: str = 'auto') -> Union[Tensor, SparseTensor]:
    """A sparse matrix from coalesced COO triplets (sorted by row, then column).

    ``layout``: ``'auto'`` (a :class:`torch_sparse.SparseTensor` when ``torch-sparse``
    is installed, otherwise ``'csr'``), ``'csr'`` / ``'coo'`` (:pytorch:`PyTorch`
    sparse tensors) or ``'sparse_tensor'``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, "
                         f"got {layout!r}")
    if layout == 'auto':
        layout = 'sparse_tensor' if torch_geometric.typing.WITH_TORCH_SPARSE else 'csr'
    if layout == 'sparse_tensor':
        if not torch_geometric.typing.WITH_TORCH_SPARSE:
            raise ImportError("layout='sparse_tensor' needs the 'torch-sparse' package")
        return SparseTensor(row=row, col=col, value=value, sparse_sizes=size,
                            is_sorted=True, trust_data=True)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support is in beta')
        if layout == 'coo':
            return torch.sparse_coo_tensor(torch.stack([row, col]), value, size,
                                           is_coalesced=True, check_invariants=False)
        crow = torch.zeros(size[0] + 1, dtype=torch.long, device=row.device)
        crow[1:] = torch.bincount(row, minlength=size[0]).cumsum(0)
        return torch.sparse_csr_tensor(crow, col, value, size, check_invariants=False)


def _check_edge_index(edge_index: Tensor, num_users: int, num_items: int,
                      where: str) -> Tensor:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
            edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else None
        raise DataError(f'{where}: expected edge_index as a tensor of shape [2, E] '
                        f'(users, items), got {shape or type(edge_index)}')
    if edge_index.is_floating_point() or edge_index.is_complex():
        raise DataError(f'{where}: expected integer edge_index, got {edge_index.dtype}')
    edge_index = edge_index.long()
    for what, ids, n in (('user', edge_index[0], num_users),
                         ('item', edge_index[1], num_items)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = int(((ids < 0) | (ids >= n)).nonzero()[0, 0])
            raise DataError(f'{where}: edge_index[:, {bad}] has {what} id '
                            f'{int(ids[bad])}, expected 0 <= id < {n}')
    return edge_index


def user_item_weights(edge_index: Tensor, num_users: int, num_items: int,
                      index=None) -> Tensor:
    r"""LightGCN weights :math:`1/\sqrt{d_u d_i}` of the user-item edges, float64.

    :math:`d` counts distinct pairs. A pair repeated :math:`c` times in
    ``edge_index`` gets :math:`1/(c\sqrt{d_u d_i})` on each copy, so propagation
    (which sums over edges) sees every pair once, with its full weight. ``index``:
    the :class:`~mambarec_pyg.data.index.TrainingIndex` of these edges, whose
    degrees are then used instead of counting again.
    """
    edge_index = _check_edge_index(edge_index, num_users, num_items,
                                   'user_item_weights')
    if index is None:
        from .index import TrainingIndex
        index = TrainingIndex(edge_index, num_users, num_items)
    deg_u = index.user_degree.to(edge_index.device).double()
    deg_i = index.item_degree.to(edge_index.device).double()
    value = _inv_sqrt(deg_u)[edge_index[0]] * _inv_sqrt(deg_i)[edge_index[1]]
    if index.has_repeats:
        key = edge_index[0] * num_items + edge_index[1]
        _, inverse, counts = torch.unique(key, return_inverse=True,
                                          return_counts=True)
        value = value / counts[inverse].double()
    return value


def normalized_adjacency(edge_index: Tensor, num_users: int, num_items: int, *,
                         dtype: torch.dtype = torch.float32,
                         layout: str = 'auto',
                         edge_weight: Optional[Tensor] = None) -> UserItemGraph:
    r"""The LightGCN-normalised user-item adjacency and its user-item block.

    .. math::
        \mathbf{L} = \mathbf{D}^{-1/2} \begin{bmatrix} 0 & \mathbf{R} \\
        \mathbf{R}^\top & 0 \end{bmatrix} \mathbf{D}^{-1/2},
        \qquad \hat{\mathbf{R}}_{ui} = \frac{1}{\sqrt{d_u d_i}},

    with :math:`\mathbf{R}` the binary ``[U, N]`` interaction matrix (repeated pairs
    count once) and :math:`d` the node degrees; a node without interactions gets an
    all-zero row and column. Users are nodes ``0..U-1``, items ``U..U+N-1``.

    Args:
        edge_index: training interactions ``[2, E]``, row 0 user ids, row 1 item ids.
        num_users: :math:`U`.
        num_items: :math:`N`.
        dtype: value dtype of the result. (default: ``torch.float32``)
        layout: see :func:`to_sparse`. (default: ``'auto'``)
        edge_weight: the weight of each edge (e.g. stored on the data by
            :class:`~mambarec_pyg.data.transforms.UserItemNorm`); ``None`` computes
            :func:`user_item_weights`. Repeated pairs are summed.

    Returns:
        :class:`UserItemGraph` ``(adj [U+N, U+N], r_hat [U, N])``.
    """
    edge_index = _check_edge_index(edge_index, num_users, num_items,
                                   'normalized_adjacency')
    if edge_weight is None:
        edge_weight = user_item_weights(edge_index, num_users, num_items)
    user, item = edge_index[0], edge_index[1]
    r_hat = sparse_from_edges(torch.stack([item, user]), edge_weight,
                              (num_users, num_items), dtype=dtype, layout=layout)
    n = num_users + num_items
    row = torch.cat([user, item + num_users])
    col = torch.cat([item + num_users, user])
    adj = sparse_from_edges(torch.stack([col, row]),
                            torch.cat([edge_weight, edge_weight]), (n, n), dtype=dtype,
                            layout=layout)
    return UserItemGraph(adj, r_hat)


def sparse_from_edges(edge_index: Tensor, edge_weight: Optional[Tensor],
                      size: Tuple[int, int], *, dtype: Optional[torch.dtype] = None,
                      layout: str = 'auto', reduce: str = 'sum'
                      ) -> Union[Tensor, SparseTensor]:
    r"""The propagation matrix of an edge list: ``M[t, s] = sum of w`` over the edges
    ``s -> t`` (PyG's ``source_to_target`` flow: ``edge_index[0]`` are sources,
    ``edge_index[1]`` targets), so ``spmm(M, x)[t] = sum_s w x[s]``.

    Args:
        edge_index: ``[2, E]`` (sources, targets).
        edge_weight: ``[E]`` weights (``None``: 1).
        size: ``(num_targets, num_sources)``.
        dtype: value dtype (default: ``edge_weight``'s, else the default dtype).
        layout: see :func:`to_sparse`.
        reduce: how repeated edges combine: ``'sum'``, or ``'max'`` (the largest
            weight; e.g. the element-wise maximum of several graphs given as one
            concatenated edge list, SMORE's max-pooled item graph).
    """
    if reduce not in ('sum', 'max'):
        raise ValueError(f"sparse_from_edges: reduce: expected 'sum' or 'max', got "
                         f"{reduce!r}")
    src, dst = edge_index[0].long(), edge_index[1].long()
    if edge_weight is None:
        edge_weight = torch.ones(src.numel(), dtype=dtype or torch.get_default_dtype(),
                                 device=src.device)
    value = edge_weight.to(torch.float64) if edge_weight.is_floating_point() else \
        edge_weight.double()
    key = dst * size[1] + src
    distinct, inverse = torch.unique(key, return_inverse=True)
    if distinct.numel() != key.numel() and reduce == 'max':
        value = value.new_zeros(distinct.numel()).scatter_reduce_(
            0, inverse, value, 'amax', include_self=False)
    elif distinct.numel() != key.numel():  # sum repeats
        value = torch.zeros(distinct.numel(), dtype=value.dtype,
                            device=value.device).index_add_(0, inverse, value)
    else:
        order = torch.argsort(key)
        value = value[order]
    row, col = distinct // size[1], distinct % size[1]
    return to_sparse(row, col, value.to(dtype or edge_weight.dtype), size, layout)


def _inv_sqrt(deg: Tensor) -> Tensor:
    """:math:`d^{-1/2}`, and 0 where :math:`d \\le 0` (no inf, no NaN)."""
    return torch.where(deg > 0, deg.clamp(min=torch.finfo(deg.dtype).tiny).rsqrt(),
                       torch.zeros_like(deg))


def _check_features(features: Tensor, k: int, where: str) -> Tensor:
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else None
        raise DataError(f'{where}: expected features as a tensor [N, D], got '
                        f'{shape or type(features)}')
    if not features.is_floating_point():
        features = features.double()
    num_items = features.size(0)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_items:
        raise DataError(f'{where}: expected 1 <= k <= N = {num_items}, got k={k!r}')
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise DataError(f'{where}: feature row {bad} has a non-finite value '
                        f'(NaN or inf); expected finite features')
    return features


def knn_edges(features: Tensor, k: int = 10, weighting: str = 'similarity', *,
              chunk_size: Optional[int] = None, backend=None) -> Tuple[Tensor, Tensor]:
    r"""The normalised kNN item-item graph as an edge list (see
    :func:`item_item_graph` for the definition; ``backend`` as in
    :func:`knn_neighbours`).

    Returns:
        ``(edge_index [2, N k], edge_weight [N k])`` in PyG's convention:
        ``edge_index[0]`` the neighbour :math:`j` (source), ``edge_index[1]`` the
        item :math:`i` (target) that aggregates it with weight
        :math:`\mathbf{S}_{ij}`; sorted by target, then source; weights float64.
    """
    features = _check_features(features, k, 'knn_edges')
    if weighting not in WEIGHTINGS:
        raise DataError(f"knn_edges: weighting: expected one of "
                        f"{', '.join(map(repr, WEIGHTINGS))}, got {weighting!r}")
    row, col, value = _knn_sym_normalized(features, k, chunk_size, weighting, backend)
    return torch.stack([col, row]), value


def item_item_graph(features: Tensor, k: int = 10, *, weighting: str = 'similarity',
                    dtype: Optional[torch.dtype] = None, layout: str = 'auto',
                    chunk_size: Optional[int] = None,
                    backend=None) -> Union[Tensor, SparseTensor]:
    r"""The normalised k-nearest-neighbour item-item graph of one modality.

    With :math:`s_{ij} = \frac{x_i^\top x_j}{\|x_i\| \|x_j\|}` the cosine similarity
    of the **raw** feature rows, every row :math:`i` keeps its :math:`k` largest
    entries (item :math:`i` itself included) with weights
    :math:`\mathbf{W}_{ij} = s_{ij}` (``weighting='similarity'``: MambaRec, MGCN) or
    :math:`1` (``'binary'``: FREEDOM) for :math:`j \in \mathrm{top}_k(i)`, and

    .. math::
        \mathbf{S} = \mathbf{D}^{-1/2} \mathbf{W} \mathbf{D}^{-1/2}, \qquad
        \mathbf{S}_{ij} = \frac{\mathbf{W}_{ij}}{\sqrt{d_i d_j}}, \quad
        d_i = \sum_j \mathbf{W}_{ij},

    (the row sum of the kept weights serves both ends of an edge, as in the released
    implementations; with binary weights every entry is :math:`1/k`).
    :math:`\mathbf{S}` is in general not symmetric.

    Details:

    * Similarities are computed in the features' own dtype (float32 for the MMRec
      files, like the released code), ``chunk_size`` rows at a time, so no
      :math:`N \times N` matrix is ever held (23,033 items for Clothing).
    * Ties are broken deterministically: among equal similarities the lower item id
      is kept (:func:`torch.topk` alone does not promise an order).
    * An all-zero feature row has similarity 0 to every item (itself included) instead
      of the released NaN; a row whose kept weights sum to :math:`\le 0` gets an
      all-zero row (and contributes nothing as a neighbour), never inf or NaN.
    * Nothing is cached here: :class:`~mambarec_pyg.data.transforms.ItemKNN` puts the
      graph on the data and caches it in the dataset's processed directory.

    Args:
        features: ``[N, D]`` raw item features (finite values).
        k: neighbours kept per item, itself included, ``1 <= k <= N``.
        weighting: ``'similarity'`` or ``'binary'`` (:data:`WEIGHTINGS`).
        dtype: value dtype of the result (default: the features' floating dtype).
        layout: see :func:`to_sparse`. (default: ``'auto'``)
        chunk_size: rows per similarity block (default: about 8M entries a block).
        backend: how the neighbours are searched (:func:`knn_neighbours`; default
            exact).
    """
    features = _check_features(features, k, 'item_item_graph')
    edge_index, value = knn_edges(features, k, weighting, chunk_size=chunk_size,
                                  backend=backend)
    num_items = features.size(0)
    return to_sparse(edge_index[1], edge_index[0], value.to(dtype or features.dtype),
                     (num_items, num_items), layout)


def knn_neighbours(features: Tensor, k: int, chunk_size: Optional[int] = None,
                   shrink: float = 0.0, backend=None) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Each row's ``k`` most similar rows (itself included), without gradient:
    ``(row [N k], col [N k], similarity [N k])`` sorted by row, then column.

    The similarity is the cosine :math:`\frac{x_i^\top x_j}{\|x_i\| \|x_j\|}`, or
    with ``shrink`` :math:`s > 0` the shrunk cosine :math:`\frac{x_i^\top x_j}
    {\|x_i\| \|x_j\| + s}` (content-based item kNN). It is computed ``chunk_size``
    rows at a time (default: about 8M entries a block), so no :math:`N \times N`
    matrix is held; an all-zero row has similarity 0 to every row; ties are broken
    by the lower column.

    ``backend``: a :class:`~mambarec_pyg.data.knn.KNNBackend` (or its name); ``None``
    or ``'exact'`` is the blocked product above, the others search with faiss
    (:mod:`mambarec_pyg.data.knn`; cosine only, no ``shrink``).
    """
    from .knn import KNNBackend, faiss_neighbours, normalize_rows
    if isinstance(backend, str):
        backend = KNNBackend(backend)
    x = features.detach()
    n = x.size(0)
    norm = x.norm(dim=1, keepdim=True)
    if shrink:
        xn = x
    else:
        # Zero rows stay zero: similarity 0 to everything instead of 0/0.
        xn = normalize_rows(x)
    if chunk_size is None:
        chunk_size = max(1, min(n, (1 << 23) // max(n, 1)))

    def exact_rows(rows: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        # rows None: all of them, as slices (the default path)
        cols, vals = [], []
        for start in range(0, n if rows is None else rows.numel(), chunk_size):
            r = slice(start, start + chunk_size) if rows is None else \
                rows[start:start + chunk_size]
            sim = xn[r] @ xn.t()
            if shrink:
                sim = sim / (norm[r] * norm.t() + shrink)
            col, val = _topk_lowest_index(sim, k)
            cols.append(col)
            vals.append(val)
        return torch.cat(cols), torch.cat(vals)

    row = torch.arange(n, device=x.device).repeat_interleave(k)
    if backend is not None and not backend.exact:
        if shrink:
            raise DataError(f'knn_neighbours: shrink={shrink} needs the exact backend, '
                            f'got {backend.name!r}')
        cols, sims = faiss_neighbours(xn, k, backend, exact_rows)
        return row, cols.reshape(-1), sims.reshape(-1)
    col, val = exact_rows(None)
    return row, col, val


def _knn_sym_normalized(features: Tensor, k: int, chunk_size: Optional[int],
                        weighting: str = 'similarity', backend=None):
    """COO triplets (sorted by row, then column) of the normalised kNN graph; values
    in float64."""
    n = features.size(0)
    row, col, sim = knn_neighbours(features, k, chunk_size, backend=backend)
    weight = sim.double()
    if weighting == 'binary':
        weight = torch.ones_like(weight)
    deg = weight.view(n, k).sum(dim=1)
    inv = _inv_sqrt(deg)
    value = inv[row] * weight * inv[col]
    return row, col, value


def _topk_lowest_index(sim: Tensor, k: int):
    """Per row, the columns of the ``k`` largest entries (ties: lower column first),
    returned sorted by column, with their values.

    :func:`torch.topk` picks the right set wherever no entry outside it equals the
    k-th largest value; only rows with such a tie at the boundary go through the
    exact rule of :func:`_topk_lowest_index_plain` (same result, tested)."""
    top = sim.topk(k, dim=1)
    kth = top.values[:, -1:]
    tied = (sim == kth).sum(dim=1) > (top.values == kth).sum(dim=1)
    cols = top.indices
    if bool(tied.any()):
        rows = tied.nonzero().view(-1)
        tie_cols, _ = _topk_lowest_index_plain(sim[rows], k)
        cols = cols.clone()
        cols[rows] = tie_cols.view(-1, k)
    cols = cols.sort(dim=1).values
    return cols.reshape(-1), sim.gather(1, cols).reshape(-1)


def _topk_lowest_index_plain(sim: Tensor, k: int):
    """:func:`_topk_lowest_index` by the rule itself: entries greater than the k-th
    largest value are all kept; of those equal to it, the lowest columns fill up."""
    kth = sim.topk(k, dim=1).values[:, -1:]
    greater = sim > kth
    need = k - greater.sum(dim=1, keepdim=True)
    equal = sim == kth
    keep = greater | (equal & (equal.cumsum(dim=1) <= need))
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: sorted by row, then col
    return cols, sim[rows, cols]


#: Entries of one block of the user-user co-occurrence product (bounds its memory).
COOCCURRENCE_BLOCK = 1 << 23


def user_cooccurrence_edges(edge_index: Tensor, num_users: int, num_items: int,
                            k: int = 40, *, block_entries: int = COOCCURRENCE_BLOCK
                            ) -> Tuple[Tensor, Tensor]:
    r"""Each user's top-:math:`k` co-occurring users in the interactions
    ``edge_index`` (the user-user graph of DualGNN and DRAGON).

    With :math:`\mathcal{I}_u` the distinct items of user :math:`u` in
    ``edge_index``, the co-occurrence of two users is

    .. math::
        c_{uv} = |\mathcal{I}_u \cap \mathcal{I}_v| \qquad (u \ne v),

    the number of items both interacted with (repeated pairs count once; a user is
    never its own neighbour). User :math:`u` keeps the (at most) :math:`k` users
    :math:`v` with the largest :math:`c_{uv} > 0`; among equal counts the lower user
    id is kept. A user who shares no item with anyone keeps none.

    This is the graph of MMRec's ``preprocessing/dualgnn-gen-u-u-matrix.py`` (the
    dense :math:`U \times U` count matrix, then ``torch.topk`` per row, of at most
    200 neighbours), from which DualGNN and DRAGON take each user's first 40 entries:
    the same neighbours for :math:`k \le 200`, with ties broken deterministically
    here (``torch.topk`` leaves their order unspecified). It is computed sparsely,
    as :math:`\mathbf{C} = \mathbf{R}\mathbf{R}^\top` over blocks of users whose
    product has at most about ``block_entries`` non-zeros, so no :math:`U \times U`
    matrix is ever held (19,445 users for Baby).

    Args:
        edge_index: the interactions ``[2, E]`` (row 0 users, row 1 items); pass the
            **training** interactions only.
        num_users: :math:`U`.
        num_items: :math:`N`.
        k: neighbours kept per user, :math:`k \ge 1`.
        block_entries: the bound on the non-zeros of one block product.

    Returns:
        ``(edge_index [2, E'], count [E'])``: ``edge_index[0]`` the neighbour
        :math:`v` (source), ``edge_index[1]`` the user :math:`u` (target), sorted by
        :math:`u`, then by descending :math:`c_{uv}`, then by :math:`v`; ``count``
        :math:`c_{uv}` as float64.
    """
    import numpy as np
    import scipy.sparse as sp

    edge_index = _check_edge_index(edge_index, num_users, num_items,
                                   'user_cooccurrence_edges')
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise DataError(f'user_cooccurrence_edges: expected k >= 1, got k={k!r}')
    if block_entries < 1:
        raise ValueError(f'user_cooccurrence_edges: expected block_entries >= 1, got '
                         f'{block_entries!r}')
    ei = edge_index.detach().cpu().numpy()
    keys = np.unique(ei[0] * num_items + ei[1])  # distinct pairs, sorted by user
    users, items = keys // num_items, keys % num_items
    ones = np.ones(keys.size, dtype=np.int64)
    r = sp.csr_matrix((ones, (users, items)), shape=(num_users, num_items))
    r_t = r.T.tocsr()
    # An upper bound of each user's product entries: the sum of its items' degrees.
    item_degree = np.bincount(items, minlength=num_items)
    cost = np.bincount(users, weights=item_degree[items], minlength=num_users)
    total = np.concatenate([[0.0], np.cumsum(cost)])
    srcs, dsts, counts = [], [], []
    start = 0
    while start < num_users:
        # the longest run of users from `start` within the budget (at least one)
        stop = int(np.searchsorted(total, total[start] + block_entries,
                                   side='right')) - 1
        stop = min(max(stop, start + 1), num_users)
        c = (r[start:stop] @ r_t).tocoo()
        row, col, val = c.row.astype(np.int64) + start, c.col.astype(np.int64), c.data
        keep = (row != col) & (val > 0)
        row, col, val = row[keep], col[keep], val[keep]
        # per user: descending count, then ascending neighbour id
        order = np.lexsort((col, -val, row))
        row, col, val = row[order], col[order], val[order]
        first = np.searchsorted(row, row, side='left')  # first entry of each row
        keep = (np.arange(row.size) - first) < k
        dsts.append(row[keep])
        srcs.append(col[keep])
        counts.append(val[keep])
        start = stop
    src = torch.from_numpy(np.concatenate(srcs) if srcs else np.zeros(0, np.int64))
    dst = torch.from_numpy(np.concatenate(dsts) if dsts else np.zeros(0, np.int64))
    count = torch.from_numpy(np.concatenate(counts).astype(np.float64) if counts
                             else np.zeros(0))
    device = edge_index.device
    return torch.stack([src, dst]).to(device), count.to(device)


#: Share of the leading and of the trailing singular values PGL pairs.
PRINCIPAL_FRACTION = 0.25
#: Entries of the principal graph below this magnitude are dropped (PGL's 1e-3).
PRINCIPAL_THRESHOLD = 1e-3


def principal_graph_edges(edge_index: Tensor, num_users: int, num_items: int,
                          rank: int = 64, *, fraction: float = PRINCIPAL_FRACTION,
                          threshold: float = PRINCIPAL_THRESHOLD,
                          block_entries: int = COOCCURRENCE_BLOCK
                          ) -> Tuple[Tensor, Tensor]:
    r"""PGL's global principal graph (`"Mind Individual Information! Principal
    Graph Learning for Multimedia Recommendation"
    <https://github.com/demonph10/PGL>`_, AAAI 2025): a low-rank rebuild of the
    normalised user-item adjacency from its leading singular vectors.

    With :math:`\hat{\mathbf{A}} = \sum_i s_i \mathbf{u}_i \mathbf{v}_i^\top` the
    :math:`r` largest singular triplets (``rank``, :math:`s_1 \ge \dots \ge s_r`) of
    the normalised :math:`(U+N) \times (U+N)` adjacency
    (:func:`normalized_adjacency`) and :math:`n = \lfloor \texttt{fraction}\cdot r
    \rfloor`,

    .. math::
        \mathbf{P} = \sum_{i=1}^{n} s_i\, s_{r - n + i}\; \mathbf{u}_i
        \mathbf{v}_i^\top, \qquad \text{entries with } |\mathbf{P}_{ab}| <
        \texttt{threshold} \text{ dropped}:

    the :math:`i`-th leading direction weighted by the product of its singular value
    and the :math:`i`-th of the trailing quarter, as PGL's code computes it (MMRec's
    ``global_subgraph_extraction``). :math:`\hat{\mathbf{A}}` is symmetric, so its
    singular triplets come from its eigenpairs (:math:`s_i = |\lambda_i|`,
    :math:`\mathbf{v}_i = \mathrm{sign}(\lambda_i)\mathbf{u}_i`; scipy's ``eigsh``
    with a fixed start vector, or a dense ``eigh`` for small graphs) and
    :math:`\mathbf{P}` is symmetric. It is formed in row blocks of about
    ``block_entries`` entries, so no dense :math:`(U+N)^2` matrix is held.

    Args:
        edge_index: the **training** interactions ``[2, E]`` (users, items).
        num_users: :math:`U`.
        num_items: :math:`N`.
        rank: :math:`r`, the number of singular triplets (PGL: the embedding size).
        fraction: the share of :math:`r` paired (:math:`n`).
        threshold: the smallest magnitude kept.
        block_entries: the bound on the entries of one dense block.

    Returns:
        ``(edge_index [2, E'], weight [E'])`` over the :math:`U + N` nodes (users
        first; row 0 the source :math:`b`, row 1 the target :math:`a`, weight
        :math:`\mathbf{P}_{ab}`), sorted by target, then source; float64.
    """
    import numpy as np
    import scipy.sparse as sp

    edge_index = _check_edge_index(edge_index, num_users, num_items,
                                   'principal_graph_edges')
    n_nodes = num_users + num_items
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= n_nodes:
        raise DataError(f'principal_graph_edges: expected 1 <= rank <= U + N = '
                        f'{n_nodes}, got rank={rank!r}')
    n = int(fraction * rank)
    if n < 1:
        raise DataError(f'principal_graph_edges: fraction * rank = {fraction * rank} '
                        f'pairs no singular value; expected at least 1')
    adj = normalized_adjacency(edge_index.cpu(), num_users, num_items,
                               dtype=torch.float64, layout='coo').adj.coalesce()
    row, col = adj.indices().numpy()
    a = sp.csr_matrix((adj.values().numpy(), (row, col)), shape=(n_nodes, n_nodes))
    if rank >= n_nodes - 1:  # eigsh needs rank < n: small graphs, dense
        lam, q = np.linalg.eigh(a.toarray())
    else:
        from scipy.sparse.linalg import eigsh
        lam, q = eigsh(a, k=rank, which='LM', v0=np.ones(n_nodes))
    order = np.argsort(-np.abs(lam), kind='stable')[:rank]
    lam, q = lam[order], q[:, order]
    s = np.abs(lam)
    weight = s[:n] * s[rank - n:rank] * np.sign(lam[:n])
    left = q[:, :n] * weight  # P = left @ q[:, :n].T
    right_t = np.ascontiguousarray(q[:, :n].T)
    rows = max(1, block_entries // n_nodes)
    srcs, dsts, values = [], [], []
    for start in range(0, n_nodes, rows):
        block = left[start:start + rows] @ right_t
        r, c = np.nonzero(np.abs(block) >= threshold)
        dsts.append(r + start)
        srcs.append(c)
        values.append(block[r, c])
    src = torch.from_numpy(np.concatenate(srcs).astype(np.int64))
    dst = torch.from_numpy(np.concatenate(dsts).astype(np.int64))
    value = torch.from_numpy(np.concatenate(values).astype(np.float64))
    device = edge_index.device
    return torch.stack([src, dst]).to(device), value.to(device)


def binary_graph_weights(edge_index: Tensor, num_nodes: int) -> Tensor:
    r"""The weights of a binary graph normalised with its row degrees,

    .. math::
        w_{ji} = \frac{1}{\sqrt{d_i\, d_j}}, \qquad d_i = |\{j : j \to i\}|,

    for the edges :math:`j \to i` of ``edge_index`` (``[2, E]``: sources, targets;
    distinct edges), as MMRec's ``compute_normalized_laplacian`` (the row sum of the
    target serves both ends; a node without incoming edges has degree 0 and adds
    nothing). Returns float64 ``[E]``.
    """
    deg = torch.bincount(edge_index[1], minlength=num_nodes).double()
    inv = _inv_sqrt(deg)
    return inv[edge_index[1]] * inv[edge_index[0]]


def denoised_knn_edges(features: Sequence[Tensor], k: int = 10, *,
                       chunk_size: Optional[int] = None
                       ) -> List[Tuple[Tensor, Tensor]]:
    r"""DA-MRS's denoised kNN item-item graphs (`"Improving Multi-modal
    Recommender Systems by Denoising and Aligning Multi-modal Content and User
    Feedback" <https://github.com/XMUDM/DA-MRS>`_, Xv et al., KDD 2024): one graph
    per modality, on the item pairs that are similar in **every** modality.

    With :math:`s^m_{ij}` the cosine similarity of the raw features of modality
    :math:`m` and :math:`\bar s^m` its mean over all :math:`N^2` pairs, the pair
    :math:`(i, j)` is a candidate when :math:`s^m_{ij} \ge \bar s^m` for every
    :math:`m`. Item :math:`i` keeps, in each modality, its :math:`\min(k, c_i)`
    candidates of largest :math:`s^m_{ij}` (:math:`c_i` its number of candidates;
    ties: the lower id), with binary weights normalised by the row degrees
    (:func:`binary_graph_weights`). The modality graphs share their candidates but
    not their neighbours.

    Similarities are computed in the features' dtype, ``chunk_size`` rows at a time
    (no :math:`N \times N` matrix is held); the mean of a modality's similarities is
    :math:`\|\sum_i \hat x_i\|^2 / N^2` of its L2-normalised rows
    :math:`\hat x_i`. An all-zero feature row has similarity 0 to every item.

    Args:
        features: one ``[N, D_m]`` table per modality (finite values).
        k: neighbours kept per item at most, itself included.
        chunk_size: rows per similarity block (default: about 8M entries).

    Returns:
        per modality, ``(edge_index [2, E_m], edge_weight [E_m])``:
        ``edge_index[0]`` the neighbour (source), ``edge_index[1]`` the item (target);
        sorted by target, then source; weights float64.
    """
    if len(features) == 0:
        raise DataError('denoised_knn_edges: expected at least one feature table')
    tables = [_check_features(x, k, 'denoised_knn_edges') for x in features]
    n = tables[0].size(0)
    if any(x.size(0) != n for x in tables):
        raise DataError(f'denoised_knn_edges: expected feature tables with the same '
                        f'number of rows, got {[x.size(0) for x in tables]}')
    normed, means = [], []
    for x in tables:
        x = x.detach()
        norm = x.norm(dim=1, keepdim=True)
        xn = torch.where(norm > 0, x / norm.clamp(min=torch.finfo(x.dtype).tiny),
                         torch.zeros_like(x))
        normed.append(xn)
        means.append(float(xn.double().sum(0).square().sum()) / (n * n))
    if chunk_size is None:
        chunk_size = max(1, min(n, (1 << 23) // max(n, 1)))
    kept: List[List[Tuple[Tensor, Tensor]]] = [[] for _ in tables]
    for start in range(0, n, chunk_size):
        sims = [xn[start:start + chunk_size] @ xn.t() for xn in normed]
        mask = sims[0] < means[0]
        for sim, mean in zip(sims[1:], means[1:]):
            mask |= sim < mean
        rows = torch.arange(start, start + sims[0].size(0),
                            device=sims[0].device).repeat_interleave(k)
        for m, sim in enumerate(sims):
            cols, vals = _topk_lowest_index(sim.masked_fill(mask, -math.inf), k)
            finite = torch.isfinite(vals)
            kept[m].append((rows[finite], cols[finite]))
    out = []
    for pieces in kept:
        row = torch.cat([r for r, _ in pieces])
        col = torch.cat([c for _, c in pieces])
        edge_index = torch.stack([col, row])
        out.append((edge_index, binary_graph_weights(edge_index, n)))
    return out
