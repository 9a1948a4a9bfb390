r"""Sparse propagation matrices as the models hold them: read from the graphs on
the data, checked, and kept as non-persistent buffers.

* :class:`SparseGraphs` -- a module of named CSR matrices and their transposes
  (they follow ``.to()`` / ``.double()`` and stay out of the state dict);
* :func:`user_item_matrices` -- the normalised user-item graph of
  :class:`~mambarec_pyg.data.transforms.UserItemNorm` as the symmetric
  :math:`(U + N)^2` adjacency and its user-item block :math:`\hat{\mathbf{R}}`;
* :func:`edge_matrix` -- any weighted edge type on the data as a matrix;
* :func:`as_csr` -- a user-given matrix (dense, sparse, numpy) as a checked CSR tensor.

Rows are the targets of propagation, so each matrix feeds
:class:`~mambarec_pyg.nn.conv.WeightedPropagation` or
:class:`~mambarec_pyg.nn.conv.LightGCNPropagation` directly.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..data.errors import DataError
from ..data.graphs import normalized_adjacency, sparse_from_edges
from ..data.index import UI
from .conv import transpose_sparse

__all__ = ['SparseGraphs', 'user_item_matrices', 'edge_matrix', 'as_csr']


class SparseGraphs(torch.nn.Module):
    """Sparse propagation matrices (CSR) and their transposes, as non-persistent
    buffers: they follow ``.to()`` / ``.double()`` and stay out of the state dict.

    ``graphs.set('adj', csr)`` stores ``adj`` and ``adj_t``; ``graphs['adj']`` reads.
    """

    def set(self, name: str, value: Tensor, transpose: bool = True) -> None:
        self.register_buffer(name, value, persistent=False)
        if transpose:
            self.register_buffer(name + '_t', transpose_sparse(value),
                                 persistent=False)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)

    def __contains__(self, name: str) -> bool:
        return name in self._buffers

    def __deepcopy__(self, memo):
        # Sparse CSR tensors have no storage for the generic deepcopy; clone them.
        new = SparseGraphs()
        memo[id(self)] = new
        for name, value in self._buffers.items():
            new.register_buffer(name, value.clone(), persistent=False)
        return new


def user_item_matrices(data, dtype: Optional[torch.dtype] = None
                       ) -> Tuple[Tensor, Tensor]:
    r"""``(adj [U+N, U+N], r_hat [U, N])``: the normalised user-item graph that
    :class:`~mambarec_pyg.data.transforms.UserItemNorm` put on ``data``, as CSR
    matrices on the CPU (rows are targets; users first in ``adj``).

    Args:
        data (HeteroData): with ``data['user', 'interacts', 'item'].edge_weight``.
        dtype (torch.dtype, optional): the value dtype (default: the default dtype).

    **Shapes:**
        - **output:** :math:`(U + N, U + N)`, :math:`(U, N)`
    """
    store = data[UI]
    if 'edge_weight' not in store:
        raise DataError("expected the normalised user-item graph "
                        "data['user', 'interacts', 'item'].edge_weight "
                        "(mambarec_pyg.data.transforms.UserItemNorm)")
    g = normalized_adjacency(store.edge_index.cpu(), int(data['user'].num_nodes),
                             int(data['item'].num_nodes),
                             edge_weight=store.edge_weight.cpu().double(),
                             dtype=dtype or torch.get_default_dtype(), layout='csr')
    return g.adj, g.r_hat


def edge_matrix(data, edge_type, dtype: Optional[torch.dtype] = None) -> Tensor:
    r"""The CSR propagation matrix (rows are targets) of the weighted edge type
    ``edge_type`` on ``data`` (e.g. a kNN graph of
    :class:`~mambarec_pyg.data.transforms.ItemKNN`), on the CPU.

    Args:
        data (HeteroData): the dataset with the edge type.
        edge_type (tuple): ``(src, relation, dst)``; without ``edge_weight`` every
            edge weighs 1.
        dtype (torch.dtype, optional): the value dtype (default: the default dtype).

    **Shapes:**
        - **output:** :math:`(|\mathcal{V}_{dst}|, |\mathcal{V}_{src}|)`
    """
    if edge_type not in data.edge_types:
        raise DataError(f'expected the graph {edge_type} on the data')
    store = data[edge_type]
    src, _, dst = edge_type
    size = (int(data[dst].num_nodes), int(data[src].num_nodes))
    weight = store.edge_weight.cpu().double() if 'edge_weight' in store else None
    return sparse_from_edges(store.edge_index.cpu(), weight, size,
                             dtype=dtype or torch.get_default_dtype(), layout='csr')


def as_csr(value, name: str, shape) -> Tensor:
    """A dense or sparse tensor, numpy array or ``SparseTensor`` as a CSR tensor of
    shape ``shape`` (``ValueError`` naming ``name`` otherwise).

    Args:
        value: the matrix.
        name (str): how an error names it.
        shape (tuple): the expected shape.
    """
    import numpy as np
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    try:
        from torch_geometric.typing import SparseTensor
        if isinstance(value, SparseTensor):
            value = value.to_torch_sparse_csr_tensor()
    except ImportError:  # pragma: no cover
        pass
    if not isinstance(value, Tensor):
        raise ValueError(f'{name}: expected a tensor or numpy array, got '
                         f'{type(value).__name__}')
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f'{name}: expected shape {tuple(shape)}, got '
                         f'{tuple(value.shape)}')
    if value.layout == torch.strided:
        value = value.to_sparse_csr()
    elif value.layout == torch.sparse_coo:
        value = value.coalesce().to_sparse_csr()
    elif value.layout != torch.sparse_csr:
        value = value.to_sparse_csr()
    return value
