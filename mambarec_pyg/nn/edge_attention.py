r"""Edge-wise kernels on a fixed sparsity pattern and the two layers of GRCN
(`"Graph-Refined Convolutional Network for Multimedia Recommendation with Implicit
Feedback" <https://doi.org/10.1145/3394171.3413556>`_, Wei et al., ACM MM 2020)
built on them.

* :class:`EdgePattern` -- the edges of a (bipartite) graph in CSR order, with the
  transposed pattern for the backward passes;
* :func:`edge_dot` -- per-edge dot products :math:`\mathbf{x}_i^\top\mathbf{x}_j`
  (one sampled dense-dense product);
* :func:`row_softmax` -- the edge softmax over each target's incoming edges;
* :func:`edge_spmm` -- :math:`\mathbf{x}'_i = \sum_j w_{ji}\mathbf{x}_j`,
  differentiable in the edge weights and the features;
* :class:`GRCNAttention` -- GRCN's parameter-free attention
  :math:`\alpha_{ij} = \mathrm{softmax}_j(\mathbf{x}_i^\top\mathbf{x}_j)`;
* :class:`RefinedPropagation` -- one step on the refined (weighted) graph.

Each kernel has a hand-written backward pass that reuses the transposed pattern;
the layers run them on an :class:`EdgePattern` and PyG's gather-scatter on an edge
list (same values; tested against each other).
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import OptTensor
from torch_geometric.utils import softmax

__all__ = ['EdgePattern', 'edge_dot', 'edge_spmm', 'row_softmax', 'GRCNAttention',
           'RefinedPropagation']


def _csr(rowptr: Tensor, col: Tensor, values: Tensor, size) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support')
        warnings.filterwarnings('ignore', message='.*Sparse invariant checks')
        return torch.sparse_csr_tensor(rowptr, col, values, size,
                                       check_invariants=False)


class EdgePattern(torch.nn.Module):
    r"""The edges ``source -> target`` of a directed (bipartite) graph in CSR
    order (sorted by target, then source), with the transposed pattern for the
    backward passes of :func:`edge_dot` and :func:`edge_spmm`.

    Per-edge values (attention weights, edge weights) are given in this order.
    The index tensors are non-persistent buffers (they follow ``.to()``).

    Args:
        target (LongTensor): ``[E]`` target ids in ``[0, num_targets)``.
        source (LongTensor): ``[E]`` source ids in ``[0, num_sources)``; the pairs
            must be distinct.
        size (tuple): ``(num_targets, num_sources)``.
    """

    def __init__(self, target: Tensor, source: Tensor, size: Tuple[int, int]) -> None:
        super().__init__()
        n_dst, n_src = int(size[0]), int(size[1])
        self.size = (n_dst, n_src)
        target, source = target.long().cpu(), source.long().cpu()
        order = torch.argsort(target * n_src + source)
        row, col = target[order], source[order]
        t_perm = torch.argsort(col * n_dst + row)
        self.register_buffer('row', row, persistent=False)
        self.register_buffer('col', col, persistent=False)
        self.register_buffer('rowptr', self._rowptr(row, n_dst), persistent=False)
        self.register_buffer('t_rowptr', self._rowptr(col, n_src), persistent=False)
        self.register_buffer('t_col', row[t_perm], persistent=False)
        self.register_buffer('t_perm', t_perm, persistent=False)
        self.register_buffer('ones', torch.ones(row.numel()), persistent=False)

    @staticmethod
    def _rowptr(row: Tensor, n: int) -> Tensor:
        ptr = torch.zeros(n + 1, dtype=torch.long)
        ptr[1:] = torch.bincount(row, minlength=n).cumsum(0)
        return ptr

    @property
    def num_edges(self) -> int:
        return self.row.numel()

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` (sources, targets) in this pattern's order."""
        return torch.stack([self.col, self.row])

    def matrix(self, values: Optional[Tensor] = None) -> Tensor:
        """The CSR matrix ``[num_targets, num_sources]`` with these edge values."""
        values = self.ones if values is None else values
        return _csr(self.rowptr, self.col, values, self.size)

    def transposed(self, values: Optional[Tensor] = None) -> Tensor:
        """The transpose ``[num_sources, num_targets]`` as CSR, with the values
        given in this pattern's order."""
        values = self.ones if values is None else values
        return _csr(self.t_rowptr, self.t_col, values[self.t_perm],
                    (self.size[1], self.size[0]))

    def extra_repr(self) -> str:
        return f'size={self.size}, edges={self.num_edges}'


def _sampled(pattern: EdgePattern, a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\langle a_{t_e}, b_{s_e} \rangle` per edge :math:`e`."""
    if a.numel() == 0 or pattern.num_edges == 0:
        return a.new_zeros(pattern.num_edges)
    mask = pattern.matrix(pattern.ones.to(a.dtype))
    return torch.sparse.sampled_addmm(mask, a.contiguous(), b.t(), beta=0.0).values()


class _EdgeDot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_dst: Tensor, x_src: Tensor, pattern: EdgePattern) -> Tensor:
        ctx.save_for_backward(x_dst, x_src)
        ctx.pattern = pattern
        return _sampled(pattern, x_dst, x_src)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x_dst, x_src = ctx.saved_tensors
        p = ctx.pattern
        grad = grad.contiguous()
        g_dst = p.matrix(grad) @ x_src if ctx.needs_input_grad[0] else None
        g_src = p.transposed(grad) @ x_dst if ctx.needs_input_grad[1] else None
        return g_dst, g_src, None


class _EdgeSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: Tensor, x_src: Tensor, pattern: EdgePattern) -> Tensor:
        ctx.save_for_backward(values, x_src)
        ctx.pattern = pattern
        return pattern.matrix(values) @ x_src

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        values, x_src = ctx.saved_tensors
        p = ctx.pattern
        grad = grad.contiguous()
        g_val = _sampled(p, grad, x_src) if ctx.needs_input_grad[0] else None
        g_src = p.transposed(values) @ grad if ctx.needs_input_grad[1] else None
        return g_val, g_src, None


def edge_dot(pattern: EdgePattern, x_dst: Tensor, x_src: Tensor) -> Tensor:
    r"""Per-edge inner products :math:`s_e = \langle \mathbf{x}^{dst}_{t_e},
    \mathbf{x}^{src}_{s_e} \rangle` (``[E]``, the pattern's order), by a sampled
    dense-dense product; the backward pass is two CSR products,
    :math:`\mathbf{S}\mathbf{x}^{src}` and :math:`\mathbf{S}^\top\mathbf{x}^{dst}`
    with :math:`\mathbf{S}` the matrix of the incoming gradient."""
    return _EdgeDot.apply(x_dst, x_src, pattern)


def edge_spmm(pattern: EdgePattern, values: Tensor, x_src: Tensor) -> Tensor:
    r""":math:`\mathbf{A}\mathbf{x}^{src}` with :math:`\mathbf{A}` the pattern's
    matrix holding ``values``, differentiable in both: the gradient of ``x_src``
    is a product with the transposed pattern, that of each value the inner
    product of its target's gradient and its source's features (:func:`edge_dot`'s
    kernel)."""
    return _EdgeSpMM.apply(values, x_src, pattern)


class _RowSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, pattern: EdgePattern) -> Tensor:
        row, rowptr = pattern.row, pattern.rowptr
        if scores.numel() == 0:
            alpha = scores.clone()
        else:
            top = torch.segment_reduce(scores, 'max', offsets=rowptr)
            alpha = (scores - top[row]).exp_()
            alpha.div_(torch.segment_reduce(alpha, 'sum', offsets=rowptr)[row])
        ctx.save_for_backward(alpha)
        ctx.pattern = pattern
        return alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        (alpha, ) = ctx.saved_tensors
        p = ctx.pattern
        g = alpha * grad
        if g.numel():
            g.sub_(alpha * torch.segment_reduce(g, 'sum', offsets=p.rowptr)[p.row])
        return g, None


def row_softmax(pattern: EdgePattern, scores: Tensor) -> Tensor:
    r"""Softmax of the per-edge ``scores`` over each target's incoming edges
    (:math:`\alpha_e = \exp(s_e - \max) / \sum \exp(s - \max)` per CSR row,
    by segment reductions), with the backward pass
    :math:`\partial s_e = \alpha_e (g_e - \sum_{e' \in \mathrm{row}}
    \alpha_{e'} g_{e'})`. The value of PyG's
    :func:`~torch_geometric.utils.softmax` without its :math:`10^{-16}` in the
    denominator (below float64 resolution: the denominator is at least 1)."""
    return _RowSoftmax.apply(scores, pattern)


def _pair(x) -> Tuple[Tensor, Optional[Tensor]]:
    if isinstance(x, (tuple, list)):
        return x[0], x[1]
    return x, x


class GRCNAttention(MessagePassing):
    r"""GRCN's parameter-free attention (MMRec's ``GATConv`` without self loops):

    .. math::
        \alpha_{ij} = \mathrm{softmax}_{j \in \mathcal{N}(i)}
        (\mathbf{x}_i^\top \mathbf{x}_j), \qquad
        \mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} \alpha_{ij} \mathbf{x}_j.

    :meth:`forward` returns the output and the attention weights (one per edge).
    On an :class:`EdgePattern` it runs the fused kernels (:func:`edge_dot`,
    softmax, :func:`edge_spmm`); on an edge list PyG's gather-scatter
    (:meth:`message`). Bipartite graphs take ``x = (sources, targets)``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)
        self._alpha: OptTensor = None

    def forward(self, x: Union[Tensor, Tuple[Tensor, Tensor]],
                edge_index: Union[Tensor, EdgePattern],
                size: Optional[Tuple[int, int]] = None) -> Tuple[Tensor, Tensor]:
        """``edge_index``: an edge list ``[2, E]`` (sources, targets; ``size`` for
        a bipartite graph) or an :class:`EdgePattern`. Returns ``(out,
        alpha [E])``, ``alpha`` in the order of the edges given."""
        x = _pair(x)
        if isinstance(edge_index, EdgePattern):
            out = self.propagate(edge_index.matrix(), x=x, pattern=edge_index)
        else:
            out = self.propagate(edge_index, x=x, size=size, pattern=None)
        alpha, self._alpha = self._alpha, None
        return out, alpha

    def message(self, x_i: Tensor, x_j: Tensor, index: Tensor, ptr: OptTensor,
                size_i: Optional[int]) -> Tensor:
        alpha = softmax((x_i * x_j).sum(dim=-1), index, ptr, size_i)
        self._alpha = alpha
        return alpha.unsqueeze(-1) * x_j

    def message_and_aggregate(self, adj_t, x, pattern: EdgePattern) -> Tensor:
        x_src, x_dst = x
        alpha = row_softmax(pattern, edge_dot(pattern, x_dst, x_src))
        self._alpha = alpha
        return edge_spmm(pattern, alpha, x_src)


class RefinedPropagation(MessagePassing):
    r"""One step on the refined graph (MMRec's ``SAGEConv`` in GRCN, aggregation
    ``'add'``, no weight matrix):
    :math:`\mathbf{x}^{\prime}_i = \sum_{j \in \mathcal{N}(i)} w_{ji}\mathbf{x}_j`,
    differentiable in the edge weights. On an :class:`EdgePattern`,
    :func:`edge_spmm`; on an edge list, PyG's gather-scatter."""

    def __init__(self, **kwargs):
        kwargs.setdefault('aggr', 'add')
        super().__init__(**kwargs)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]],
                edge_index: Union[Tensor, EdgePattern], edge_weight: Tensor,
                size: Optional[Tuple[int, int]] = None) -> Tensor:
        """``edge_weight [E]`` in the order of the edges given."""
        if not isinstance(x, (tuple, list)):
            x = (x, None)
        if isinstance(edge_index, EdgePattern):
            return self.propagate(edge_index.matrix(), x=x, edge_weight=edge_weight,
                                  pattern=edge_index)
        return self.propagate(edge_index, x=x, edge_weight=edge_weight, size=size,
                              pattern=None)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t, x, edge_weight: Tensor,
                              pattern: EdgePattern) -> Tensor:
        return edge_spmm(pattern, edge_weight, x[0])
