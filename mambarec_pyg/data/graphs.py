r"""The graphs MambaRec propagates on, built once before training.

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
  `"MGCN" <https://arxiv.org/abs/2308.03588>`_), cached on disk.

Both return sparse matrices ready for :func:`torch_geometric.utils.spmm`: a
:class:`torch_sparse.SparseTensor` when ``torch-sparse`` is installed
(``layout='auto'``), a :pytorch:`PyTorch` sparse CSR tensor otherwise. Rows are the
targets of propagation: ``spmm(adj, x)[i] = sum_j adj[i, j] x[j]``.

Normalisation is computed in float64 and cast to ``dtype`` at the end, so the values
are the exact :math:`1/\sqrt{\cdot}` of the degrees rounded once.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

import torch_geometric.typing
from torch_geometric.typing import SparseTensor

from ..io import atomic_path
from .errors import DataError

__all__ = ['normalized_adjacency', 'item_item_graph', 'UserItemGraph', 'to_sparse',
           'default_cache_dir', 'LAYOUTS']

#: Sparse layouts the builders can return.
LAYOUTS = ('auto', 'csr', 'coo', 'sparse_tensor')

# Bumped whenever the kNN construction changes, so old cache files are not reused.
_KNN_VERSION = 1


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


def normalized_adjacency(edge_index: Tensor, num_users: int, num_items: int, *,
                         dtype: torch.dtype = torch.float32,
                         layout: str = 'auto') -> UserItemGraph:
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

    Returns:
        :class:`UserItemGraph` ``(adj [U+N, U+N], r_hat [U, N])``.
    """
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
            edge_index.size(0) != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else None
        raise DataError(f'normalized_adjacency: expected edge_index as a tensor of '
                        f'shape [2, E] (users, items), got {shape or type(edge_index)}')
    if edge_index.is_floating_point() or edge_index.is_complex():
        raise DataError(f'normalized_adjacency: expected integer edge_index, got '
                        f'{edge_index.dtype}')
    edge_index = edge_index.long()
    for what, ids, n in (('user', edge_index[0], num_users),
                         ('item', edge_index[1], num_items)):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = int(((ids < 0) | (ids >= n)).nonzero()[0, 0])
            raise DataError(f'normalized_adjacency: edge_index[:, {bad}] has {what} '
                            f'id {int(ids[bad])}, expected 0 <= id < {n}')
    # Binary R: one entry per distinct (user, item) pair, sorted by user then item.
    key = torch.unique(edge_index[0] * num_items + edge_index[1])
    user, item = key // num_items, key % num_items
    deg_u = torch.bincount(user, minlength=num_users).double()
    deg_i = torch.bincount(item, minlength=num_items).double()
    inv_u = _inv_sqrt(deg_u)
    inv_i = _inv_sqrt(deg_i)
    value = inv_u[user] * inv_i[item]

    r_hat = to_sparse(user, item, value.to(dtype), (num_users, num_items), layout)

    # Full matrix: the R block (rows of users) then the R^T block (rows of items);
    # sort once by (row, col) so both sparse formats get coalesced input.
    row = torch.cat([user, item + num_users])
    col = torch.cat([item + num_users, user])
    n = num_users + num_items
    order = torch.argsort(row * n + col)
    adj = to_sparse(row[order], col[order],
                    torch.cat([value, value])[order].to(dtype), (n, n), layout)
    return UserItemGraph(adj, r_hat)


def _inv_sqrt(deg: Tensor) -> Tensor:
    """:math:`d^{-1/2}`, and 0 where :math:`d \\le 0` (no inf, no NaN)."""
    return torch.where(deg > 0, deg.clamp(min=torch.finfo(deg.dtype).tiny).rsqrt(),
                       torch.zeros_like(deg))


def default_cache_dir() -> Path:
    """Where :func:`item_item_graph` caches: ``$MAMBAREC_CACHE/graphs``, else
    ``$XDG_CACHE_HOME/mambarec_pyg/graphs``, else ``~/.cache/mambarec_pyg/graphs``."""
    if os.environ.get('MAMBAREC_CACHE'):
        return Path(os.environ['MAMBAREC_CACHE']) / 'graphs'
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'mambarec_pyg' / 'graphs'


def _knn_key(features: Tensor, k: int) -> str:
    """sha256 over the features' bytes, shape, dtype, k and the builder version."""
    h = hashlib.sha256()
    h.update(f'knn-v{_KNN_VERSION}|{tuple(features.shape)}|{features.dtype}|k={k}|'
             .encode())
    x = features.detach().to('cpu').contiguous()
    # A byte view (no copy) of any dtype.
    h.update(memoryview(x.view(torch.uint8).reshape(-1).numpy()))
    return h.hexdigest()


def item_item_graph(features: Tensor, k: int = 10, *,
                    cache_dir: Union[str, os.PathLike, None, bool] = None,
                    dtype: Optional[torch.dtype] = None, layout: str = 'auto',
                    chunk_size: Optional[int] = None) -> Union[Tensor, SparseTensor]:
    r"""The normalised k-nearest-neighbour item-item graph of one modality.

    With :math:`s_{ij} = \frac{x_i^\top x_j}{\|x_i\| \|x_j\|}` the cosine similarity
    of the **raw** feature rows, every row :math:`i` keeps its :math:`k` largest
    entries (item :math:`i` itself included) with the similarities as weights,
    :math:`\mathbf{W}_{ij} = s_{ij}` for :math:`j \in \mathrm{top}_k(i)`, and

    .. math::
        \mathbf{S} = \mathbf{D}^{-1/2} \mathbf{W} \mathbf{D}^{-1/2}, \qquad
        \mathbf{S}_{ij} = \frac{\mathbf{W}_{ij}}{\sqrt{d_i d_j}}, \quad
        d_i = \sum_j \mathbf{W}_{ij},

    (the row sum of the kept weights serves both ends of an edge, as in the released
    implementation). :math:`\mathbf{S}` is in general not symmetric.

    Details:

    * Similarities are computed in the features' own dtype (float32 for the MMRec
      files, like the released code), ``chunk_size`` rows at a time, so no
      :math:`N \times N` matrix is ever held (23,033 items for Clothing).
    * Ties are broken deterministically: among equal similarities the lower item id
      is kept (:func:`torch.topk` alone does not promise an order).
    * An all-zero feature row has similarity 0 to every item (itself included) instead
      of the released NaN; a row whose kept weights sum to :math:`\le 0` gets an
      all-zero row (and contributes nothing as a neighbour), never inf or NaN.
    * The result is cached under ``cache_dir`` as ``knn-<sha256>.pt``, the hash taken
      over the features' bytes, shape and dtype and ``k``, so changed features never
      reuse a stale graph; files are written atomically.

    Args:
        features: ``[N, D]`` raw item features (finite values).
        k: neighbours kept per item, itself included, ``1 <= k <= N``.
        cache_dir: where to cache; ``None`` = :func:`default_cache_dir`, ``False`` =
            no caching.
        dtype: value dtype of the result (default: the features' floating dtype).
        layout: see :func:`to_sparse`. (default: ``'auto'``)
        chunk_size: rows per similarity block (default: about 8M entries a block).
    """
    if not isinstance(features, Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else None
        raise DataError(f'item_item_graph: expected features as a tensor [N, D], got '
                        f'{shape or type(features)}')
    if not features.is_floating_point():
        features = features.double()
    num_items = features.size(0)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_items:
        raise DataError(f'item_item_graph: expected 1 <= k <= N = {num_items}, got '
                        f'k={k!r}')
    finite = torch.isfinite(features).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise DataError(f'item_item_graph: feature row {bad} has a non-finite value '
                        f'(NaN or inf); expected finite features')
    out_dtype = dtype or features.dtype

    path = None
    if cache_dir is not False:
        cache_dir = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        path = Path(cache_dir) / f'knn-{_knn_key(features, k)}.pt'
        if path.is_file():
            try:
                saved = torch.load(path, map_location='cpu', weights_only=True)
                row, col, value = saved['row'], saved['col'], saved['value']
                if row.numel() == num_items * k and saved.get('k') == k:
                    return to_sparse(row.to(features.device), col.to(features.device),
                                     value.to(features.device, out_dtype),
                                     (num_items, num_items), layout)
            except Exception:  # unreadable / foreign file: rebuild and overwrite
                pass

    row, col, value = _knn_sym_normalized(features, k, chunk_size)
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save({'row': row.cpu(), 'col': col.cpu(), 'value': value.cpu(),
                        'k': k, 'shape': tuple(features.shape),
                        'version': _KNN_VERSION}, tmp)
    return to_sparse(row, col, value.to(out_dtype), (num_items, num_items), layout)


def _knn_sym_normalized(features: Tensor, k: int, chunk_size: Optional[int]):
    """COO triplets (sorted by row, then column) of the normalised kNN graph; values
    in float64."""
    x = features.detach()
    n = x.size(0)
    norm = x.norm(dim=1, keepdim=True)
    # Zero rows stay zero: similarity 0 to everything instead of 0/0.
    xn = torch.where(norm > 0, x / norm.clamp(min=torch.finfo(x.dtype).tiny),
                     torch.zeros_like(x))
    if chunk_size is None:
        chunk_size = max(1, min(n, (1 << 23) // max(n, 1)))
    cols, vals = [], []
    for start in range(0, n, chunk_size):
        sim = xn[start:start + chunk_size] @ xn.t()
        col, val = _topk_lowest_index(sim, k)
        cols.append(col)
        vals.append(val)
    col = torch.cat(cols)
    weight = torch.cat(vals).double()
    row = torch.arange(n, device=x.device).repeat_interleave(k)
    deg = weight.view(n, k).sum(dim=1)
    inv = _inv_sqrt(deg)
    value = inv[row] * weight * inv[col]
    return row, col, value


def _topk_lowest_index(sim: Tensor, k: int):
    """Per row, the columns of the ``k`` largest entries (ties: lower column first),
    returned sorted by column, with their values. Entries greater than the k-th
    largest value are all kept; of those equal to it, the lowest columns fill up."""
    kth = sim.topk(k, dim=1).values[:, -1:]
    greater = sim > kth
    need = k - greater.sum(dim=1, keepdim=True)
    equal = sim == kth
    keep = greater | (equal & (equal.cumsum(dim=1) <= need))
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: sorted by row, then col
    return cols, sim[rows, cols]
