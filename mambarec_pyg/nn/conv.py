r"""Propagation on the user-item and item-item graphs of MambaRec.

* :class:`LightGCNPropagation` -- the content view: the mean of the layer outputs of
  LightGCN (`"LightGCN: Simplifying and Powering Graph Convolution Network for
  Recommendation" <https://arxiv.org/abs/2002.02126>`_) on the pre-normalised
  user-item adjacency, by PyG's :class:`~torch_geometric.nn.conv.LGConv` or by a
  fused autograd function (:func:`lightgcn_mean`).
* :class:`WeightedPropagation` -- one step :math:`\mathbf{x}'_i = \sum_j a_{ij}
  \mathbf{x}_j` with given edge weights (the item-item kNN views and the item-to-user
  step), a :class:`~torch_geometric.nn.conv.MessagePassing` layer; and its fused
  counterpart :func:`sparse_propagate`.

The fused functions compute exactly the same values as the PyG layers; they exist for
speed. Autograd differentiates :math:`\mathbf{A}\mathbf{x}` through
:math:`\mathbf{A}^\top \mathbf{g}`, transposing the CSR matrix on every backward call,
and keeps every layer's output for the backward pass. The fused versions take the
transpose built once (for the symmetric LightGCN adjacency: the matrix itself) and
run the backward pass of the whole layer mean as a Horner recursion, keeping nothing
but the adjacency.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric.nn.conv import LGConv, MessagePassing
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import spmm

__all__ = ['LightGCNPropagation', 'WeightedPropagation', 'lightgcn_mean',
           'sparse_propagate', 'transpose_sparse']


def transpose_sparse(adj: Adj) -> Adj:
    """The transpose of a sparse matrix, in the same format (CSR stays CSR)."""
    if isinstance(adj, SparseTensor):
        return adj.t()
    if adj.layout == torch.sparse_csr:
        return adj.t().to_sparse_csr()
    if adj.layout == torch.sparse_coo:
        return adj.t().coalesce()
    raise ValueError(f'transpose_sparse: expected a sparse matrix, got layout '
                     f'{adj.layout}')


class _SparsePropagate(torch.autograd.Function):
    """``adj @ x`` with the backward pass ``adj_t @ grad`` (``adj_t`` given)."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Adj, adj_t: Adj) -> Tensor:
        ctx.adj_t = adj_t
        return spmm(adj, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        grad_x = spmm(ctx.adj_t, grad.contiguous()) if ctx.needs_input_grad[0] else None
        return grad_x, None, None


def sparse_propagate(adj: Adj, x: Tensor, adj_t: Optional[Adj] = None) -> Tensor:
    r"""Fused :math:`\mathbf{A}\mathbf{x}` (the same function as
    :class:`WeightedPropagation` on ``adj``), differentiable in ``x``.

    Args:
        adj: sparse ``[M, N]`` matrix (rows are targets).
        x: dense ``[N, F]``.
        adj_t: ``adj`` transposed, ``[N, M]``, used by the backward pass; pass it when
            calling repeatedly (see :func:`transpose_sparse`). ``None`` builds it now.
    """
    if adj_t is None:
        adj_t = transpose_sparse(adj)
    return _SparsePropagate.apply(x, adj, adj_t)


class _LightGCNMean(torch.autograd.Function):
    r"""Layer mean :math:`\frac{1}{L+1}\sum_{l=0}^{L} \mathbf{A}^l \mathbf{x}`; the
    gradient :math:`\frac{1}{L+1}\sum_l (\mathbf{A}^\top)^l \mathbf{g}` by Horner's
    rule: :math:`\mathbf{r} \leftarrow \mathbf{g} + \mathbf{A}^\top \mathbf{r}`,
    :math:`L` times."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Adj, adj_t: Adj, num_layers: int) -> Tensor:
        ctx.adj_t = adj_t
        ctx.num_layers = num_layers
        out = x.clone()
        h = x
        for _ in range(num_layers):
            h = spmm(adj, h)
            out.add_(h)
        return out.div_(num_layers + 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = grad.contiguous()
        r = grad
        for _ in range(ctx.num_layers):
            r = spmm(ctx.adj_t, r).add_(grad)
        return r / (ctx.num_layers + 1), None, None, None


def lightgcn_mean(x: Tensor, adj: Adj, num_layers: int,
                  adj_t: Optional[Adj] = None) -> Tensor:
    r"""Fused LightGCN layer mean
    :math:`\frac{1}{L+1}\sum_{l=0}^{L} \mathbf{A}^l \mathbf{x}`.

    Args:
        x: node features ``[n, F]``.
        adj: sparse ``[n, n]`` propagation matrix (rows are targets).
        num_layers: :math:`L`.
        adj_t: the transpose of ``adj`` for the backward pass; ``None`` means ``adj``
            is symmetric (true of the LightGCN-normalised adjacency) and is used as is.
    """
    return _LightGCNMean.apply(x, adj, adj if adj_t is None else adj_t,
                               int(num_layers))


class WeightedPropagation(MessagePassing):
    r"""One weighted propagation step

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} a_{ji} \mathbf{x}_j,

    with the weights used as given (no normalisation, no self loops): the item-item
    view :math:`\mathbf{S}_m \mathbf{e}_m` and the item-to-user step
    :math:`\hat{\mathbf{R}}\mathbf{e}_m` of MambaRec. Give a sparse matrix
    ``adj_t`` (rows are targets; bipartite ``[num_targets, num_sources]`` allowed) to
    use :func:`torch_geometric.utils.spmm`, or ``edge_index`` with ``edge_weight``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]],
                edge_index: Adj, edge_weight: OptTensor = None,
                size: Optional[Tuple[int, int]] = None) -> Tensor:
        return self.propagate(edge_index, x=x, edge_weight=edge_weight, size=size)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Adj, x) -> Tensor:
        if isinstance(x, (tuple, list)):
            x = x[0]
        return spmm(adj_t, x, reduce=self.aggr)


class LightGCNPropagation(torch.nn.Module):
    r"""The LightGCN content view: the mean of the layer outputs

    .. math::
        \mathbf{c} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{L}^l \mathbf{x}, \qquad
        \mathbf{x} = [\mathbf{E}_{\mathrm{user}}; \mathbf{E}_{\mathrm{item}}],

    with :math:`\mathbf{L}` the pre-normalised adjacency
    (:func:`~mambarec_pyg.data.graphs.normalized_adjacency`), layer 0 included.

    Args:
        num_layers (int): :math:`L`.
        fused (bool): use :func:`lightgcn_mean` (same values, faster backward pass,
            no stored layer outputs) instead of :obj:`num_layers`
            :class:`~torch_geometric.nn.conv.LGConv` layers with
            :obj:`normalize=False`. The fused path needs :math:`\mathbf{L}^\top`
            (``adj_t`` in :meth:`forward`) or a symmetric :math:`\mathbf{L}`.
            (default: :obj:`True`)
    """

    def __init__(self, num_layers: int, fused: bool = True):
        super().__init__()
        self.num_layers = int(num_layers)
        self.fused = bool(fused)
        self.convs = torch.nn.ModuleList(
            [LGConv(normalize=False) for _ in range(self.num_layers)])

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, adj: Adj, adj_t: Optional[Adj] = None) -> Tensor:
        if self.fused:
            return lightgcn_mean(x, adj, self.num_layers, adj_t)
        out = h = x
        for conv in self.convs:
            h = conv(h, adj)
            out = out + h
        return out / (self.num_layers + 1)

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}, fused={self.fused}'
