r"""MMGCN's graph convolution (`"MMGCN: Multi-modal Graph Convolution Network for
Personalized Recommendation of Micro-video" <https://doi.org/10.1145/3343031.3351034>`_,
Wei et al., ACM MM 2019), as MMRec's ``BaseModel`` computes it:

* :class:`MMGCNConv` -- :math:`\mathbf{x}'_i = \frac{1}{|\mathcal{N}(i)|}
  \sum_{j \in \mathcal{N}(i)} \mathbf{x}_j\mathbf{W}` (mean aggregation, no bias,
  no self loops), the weight applied on whichever side of the propagation is cheaper;
* :func:`mean_adjacency` -- the row-normalised sparse matrix that makes the mean one
  sparse product.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.nn import Parameter

from torch_geometric.nn.conv import MessagePassing
from torch_geometric.typing import Adj, SparseTensor
from torch_geometric.utils import is_sparse, spmm

from ..data.graphs import sparse_from_edges
from .conv import sparse_propagate

__all__ = ['MMGCNConv', 'mean_adjacency']


def mean_adjacency(edge_index: Tensor, size: Tuple[int, int],
                   dtype: Optional[torch.dtype] = None) -> Tensor:
    r"""The row-normalised propagation matrix of an edge list, as CSR:
    :math:`\bar{\mathbf{A}}_{ts} = c_{ts} / \deg(t)` with :math:`c_{ts}` the number
    of edges ``s -> t`` and :math:`\deg(t)` the number of edges into :math:`t`, so
    that :math:`\bar{\mathbf{A}}\mathbf{x}` is PyG's ``aggr='mean'`` over the same
    edges (a target without edges gets a zero row).

    Args:
        edge_index: ``[2, E]`` (sources, targets).
        size: ``(num_targets, num_sources)``.
        dtype: value dtype (default: the default dtype).
    """
    dst = edge_index[1].long()
    deg = torch.bincount(dst, minlength=size[0]).double()
    weight = 1.0 / deg[dst]
    return sparse_from_edges(edge_index, weight, size,
                             dtype=dtype or torch.get_default_dtype(), layout='csr')


def _num_edges(edge_index: Adj) -> int:
    if isinstance(edge_index, SparseTensor):
        return int(edge_index.nnz())
    if is_sparse(edge_index):
        return int(edge_index._nnz())
    return int(edge_index.size(1))


class MMGCNConv(MessagePassing):
    r"""MMGCN's graph convolution (MMRec's ``BaseModel``), before its activation:

    .. math::
        \mathbf{x}^{\prime}_i = \frac{1}{|\mathcal{N}(i)|}
        \sum_{j \in \mathcal{N}(i)} \mathbf{x}_j \mathbf{W},

    no bias, no self loops, no degree normalisation beyond the mean. The weight
    commutes with the mean, so the layer multiplies by :math:`\mathbf{W}` before
    propagating or after, whichever costs fewer multiply-adds (on a bipartite graph:
    the side with fewer nodes).

    Args:
        in_channels (int): input width.
        out_channels (int): output width.
        fused (bool): on a sparse matrix, run the backward pass through the
            ``transpose`` given to :meth:`forward` (see
            :func:`~mambarec_pyg.nn.conv.sparse_propagate`). (default: :obj:`True`)
    """

    def __init__(self, in_channels: int, out_channels: int, fused: bool = True,
                 **kwargs):
        kwargs.setdefault('aggr', 'mean')
        super().__init__(**kwargs)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.fused = bool(fused)
        self.weight = Parameter(torch.empty(self.in_channels, self.out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        torch.nn.init.xavier_normal_(self.weight)

    def forward(self, x: Union[Tensor, Tuple[Tensor, Optional[Tensor]]],
                edge_index: Adj, size: Optional[Tuple[int, int]] = None,
                transpose: Optional[Adj] = None) -> Tensor:
        r"""
        Args:
            x: node features, or ``(sources, targets)`` for a bipartite graph (the
                targets' features are not used; give ``size`` or a sparse matrix).
            edge_index: an edge list ``[2, E]`` (PyG's gather-scatter mean) or a
                sparse matrix whose rows are the targets and whose values are the
                mean weights :math:`1/|\mathcal{N}(i)|` (:func:`mean_adjacency`).
            size: ``(num_sources, num_targets)`` of a bipartite edge list.
            transpose: the sparse matrix transposed (fused backward pass).
        """
        x_src = x[0] if isinstance(x, (tuple, list)) else x
        num_src = x_src.size(0)
        if is_sparse(edge_index):
            num_dst = edge_index.size(0)
        elif size is not None:
            num_dst = size[1]
        else:
            num_dst = num_src
        nnz = _num_edges(edge_index)
        cost_before = num_src * self.in_channels * self.out_channels + \
            nnz * self.out_channels
        cost_after = nnz * self.in_channels + \
            num_dst * self.in_channels * self.out_channels
        before = cost_before <= cost_after
        if before:
            x_src = x_src @ self.weight
        out = self.propagate(edge_index, x=(x_src, None), size=size,
                             transpose=transpose)
        return out if before else out @ self.weight

    def message(self, x_j: Tensor) -> Tensor:
        return x_j

    def message_and_aggregate(self, adj_t: Adj, x, transpose: Optional[Adj] = None
                              ) -> Tensor:
        x = x[0] if isinstance(x, (tuple, list)) else x
        if self.fused and not isinstance(adj_t, SparseTensor):
            return sparse_propagate(adj_t, x, transpose)
        return spmm(adj_t, x)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, fused={self.fused}'
