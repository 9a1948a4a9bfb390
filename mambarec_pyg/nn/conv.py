r"""Propagation layers: PyG :class:`~torch_geometric.nn.conv.MessagePassing` layers
whose sparse path runs fast kernels.

* :class:`WeightedPropagation` -- one step :math:`\mathbf{x}'_i = \sum_j a_{ji}
  \mathbf{x}_j` with given edge weights (the item-item kNN views and the item-to-user
  step of MGCN and MambaRec, FREEDOM's item-item graph, LGMRec's modality graphs).
* :class:`LightGCNConv` -- PyG's :class:`~torch_geometric.nn.conv.LGConv`, whose
  sparse path takes a precomputed transpose for the backward pass.
* :class:`LightGCNPropagation` -- the LightGCN layer mean
  :math:`\frac{1}{L+1}\sum_{l=0}^{L}\mathbf{A}^l\mathbf{x}` over :math:`L`
  :class:`LightGCNConv` layers (`"LightGCN: Simplifying and Powering Graph
  Convolution Network for Recommendation" <https://arxiv.org/abs/2002.02126>`_).

Every layer accepts an edge list (``edge_index`` + ``edge_weight``: PyG's
gather-scatter :meth:`message` / aggregation) or a sparse matrix with rows as targets
(a :pytorch:`PyTorch` sparse CSR tensor or a :class:`torch_sparse.SparseTensor`:
:meth:`message_and_aggregate`, i.e. :func:`torch_geometric.utils.spmm`). Pass the
sparse matrix: on the CPU, four LightGCN layers on the CSR adjacency run about five
times faster than on the edge list (docs/reference.md §7).

Why the fused kernels (``fused=True``, the default; same values, tested against the
plain paths): autograd differentiates :math:`\mathbf{A}\mathbf{x}` through
:math:`\mathbf{A}^\top \mathbf{g}` and transposes a CSR matrix on every backward call.
The fused paths take the transpose built once (``transpose``; for the symmetric
LightGCN adjacency the matrix itself), and the layer mean runs its backward pass as a
Horner recursion over the same layers' kernels, keeping no layer output.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric.nn.conv import LGConv, MessagePassing
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import is_sparse, spmm

__all__ = ['LightGCNConv', 'LightGCNPropagation', 'WeightedPropagation',
           'lightgcn_mean', 'sparse_propagate', 'transpose_sparse']


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
    """``adj @ x`` with the backward pass ``transpose @ grad`` (``transpose`` given)."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Adj, transpose: Adj) -> Tensor:
        ctx.transpose = transpose
        return spmm(adj, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        grad_x = spmm(ctx.transpose, grad.contiguous()) if ctx.needs_input_grad[0] \
            else None
        return grad_x, None, None


def sparse_propagate(adj: Adj, x: Tensor, transpose: Optional[Adj] = None) -> Tensor:
    r"""Fused :math:`\mathbf{A}\mathbf{x}`, differentiable in ``x``.

    Args:
        adj: sparse ``[M, N]`` matrix (rows are targets).
        x: dense ``[N, F]``.
        transpose: ``adj`` transposed, ``[N, M]``, used by the backward pass; pass it
            when calling repeatedly (see :func:`transpose_sparse`). ``None`` builds
            it now.
    """
    if transpose is None:
        transpose = transpose_sparse(adj)
    return _SparsePropagate.apply(x, adj, transpose)


class WeightedPropagation(MessagePassing):
    r"""One weighted propagation step

    .. math::
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} a_{ji} \mathbf{x}_j,

    with the weights used as given (no normalisation, no self loops). Bipartite
    propagation (``size=(num_sources, num_targets)``, or a rectangular sparse matrix)
    is allowed: MambaRec's item-to-user step :math:`\hat{\mathbf{R}}\mathbf{e}_m`.

    Args:
        fused (bool): on a sparse matrix, use :func:`sparse_propagate` with the
            ``transpose`` given to :meth:`forward` (no transpose per backward call).
            (default: :obj:`True`)
    """

    def __init__(self, fused: bool = True, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]],
                edge_index: Adj, edge_weight: OptTensor = None,
                size: Optional[Tuple[int, int]] = None,
                transpose: Optional[Adj] = None) -> Tensor:
        """``edge_index``: an edge list ``[2, E]`` (with ``edge_weight``) or a sparse
        matrix with rows as targets; ``transpose``: that matrix transposed (fused
        backward)."""
        return self.propagate(edge_index, x=x, edge_weight=edge_weight, size=size,
                              transpose=transpose)

    def message(self, x_j: Tensor, edge_weight: OptTensor) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Adj, x, transpose: Optional[Adj] = None
                              ) -> Tensor:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if self.fused and self.aggr == 'add' and not isinstance(adj_t, SparseTensor):
            return sparse_propagate(adj_t, x, transpose)
        return spmm(adj_t, x, reduce=self.aggr)

    def extra_repr(self) -> str:
        return f'fused={self.fused}'


class LightGCNConv(LGConv):
    r"""PyG's :class:`~torch_geometric.nn.conv.LGConv`
    :math:`\mathbf{x}'_i = \sum_j a_{ji}\mathbf{x}_j` on a pre-normalised graph
    (``normalize=False``: the weights come from
    :class:`~mambarec_pyg.data.transforms.UserItemNorm`), whose sparse path can take
    the transpose of the matrix for its backward pass (``transpose``;
    :func:`sparse_propagate`)."""

    propagate_type = {'x': Tensor, 'edge_weight': OptTensor,
                      'transpose': Optional[Adj]}

    def __init__(self, fused: bool = True, **kwargs):
        kwargs.pop('normalize', None)
        super().__init__(normalize=False, **kwargs)
        self.fused = bool(fused)

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None,
                transpose: Optional[Adj] = None) -> Tensor:
        return self.propagate(edge_index, x=x, edge_weight=edge_weight,
                              transpose=transpose)

    def message_and_aggregate(self, adj_t: Adj, x: Tensor,
                              transpose: Optional[Adj] = None) -> Tensor:
        if self.fused and transpose is not None and not isinstance(adj_t, SparseTensor):
            return sparse_propagate(adj_t, x, transpose)
        return spmm(adj_t, x, reduce=self.aggr)


class _LightGCNMean(torch.autograd.Function):
    r"""Layer mean :math:`\frac{1}{L+1}\sum_{l=0}^{L} \mathbf{A}^l \mathbf{x}`, each
    hop one layer's sparse kernel; the gradient
    :math:`\frac{1}{L+1}\sum_l (\mathbf{A}^\top)^l \mathbf{g}` by Horner's rule:
    :math:`\mathbf{r} \leftarrow \mathbf{g} + \mathbf{A}^\top \mathbf{r}`, through
    the same layers in reverse order."""

    @staticmethod
    def forward(ctx, x: Tensor, adj: Adj, transpose: Adj, convs) -> Tensor:
        ctx.transpose = transpose
        ctx.convs = convs
        out = x.clone()
        h = x
        for conv in convs:
            h = conv.message_and_aggregate(adj, h)
            out.add_(h)
        return out.div_(len(convs) + 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = grad.contiguous()
        r = grad
        for conv in reversed(ctx.convs):
            r = conv.message_and_aggregate(ctx.transpose, r).add_(grad)
        return r / (len(ctx.convs) + 1), None, None, None


def lightgcn_mean(x: Tensor, adj: Adj, num_layers: int,
                  transpose: Optional[Adj] = None) -> Tensor:
    r"""Fused LightGCN layer mean
    :math:`\frac{1}{L+1}\sum_{l=0}^{L} \mathbf{A}^l \mathbf{x}` (plain sparse
    products; :class:`LightGCNPropagation` is the module).

    Args:
        x: node features ``[n, F]``.
        adj: sparse ``[n, n]`` propagation matrix (rows are targets).
        num_layers: :math:`L`.
        transpose: the transpose of ``adj`` for the backward pass; ``None`` means
            ``adj`` is symmetric (true of the LightGCN-normalised adjacency).
    """
    convs = [LightGCNConv(fused=False) for _ in range(int(num_layers))]
    return _LightGCNMean.apply(x, adj, adj if transpose is None else transpose, convs)


class LightGCNPropagation(torch.nn.Module):
    r"""The LightGCN layer mean over :math:`L` :class:`LightGCNConv` layers

    .. math::
        \mathbf{c} = \frac{1}{L+1} \sum_{l=0}^{L} \mathbf{A}^l \mathbf{x}

    on a pre-normalised adjacency :math:`\mathbf{A}`
    (:func:`~mambarec_pyg.data.graphs.normalized_adjacency`), layer 0 included (the
    content view of MGCN and MambaRec; LightGCN's final embeddings).

    Args:
        num_layers (int): :math:`L`.
        fused (bool): on a sparse matrix, run the mean as one autograd function over
            the layers' sparse kernels (:meth:`LightGCNConv.message_and_aggregate`):
            the backward pass is a Horner recursion over the transpose (``transpose``
            in :meth:`forward`, or ``adj`` itself when symmetric), storing no layer
            output. Same values as ``fused=False``, which calls each layer in turn
            and lets autograd differentiate it. (default: :obj:`True`)
    """

    def __init__(self, num_layers: int, fused: bool = True):
        super().__init__()
        self.num_layers = int(num_layers)
        self.fused = bool(fused)
        self.convs = torch.nn.ModuleList(
            [LightGCNConv(fused=fused) for _ in range(self.num_layers)])

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None,
                transpose: Optional[Adj] = None, symmetric: bool = True) -> Tensor:
        """``edge_index``: a sparse matrix (rows are targets) or an edge list with
        ``edge_weight``; ``transpose``: the matrix transposed (default: the matrix
        itself when ``symmetric``)."""
        sparse = is_sparse(edge_index)
        if sparse and transpose is None and symmetric:
            transpose = edge_index
        if self.fused and sparse and self.num_layers and \
                not isinstance(edge_index, SparseTensor):
            if transpose is None:
                transpose = transpose_sparse(edge_index)
            return _LightGCNMean.apply(x, edge_index, transpose, list(self.convs))
        out = h = x
        for conv in self.convs:
            h = conv(h, edge_index, edge_weight, transpose=transpose)
            out = out + h
        return out / (self.num_layers + 1)

    def extra_repr(self) -> str:
        return f'num_layers={self.num_layers}, fused={self.fused}'
