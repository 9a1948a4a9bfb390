"""Propagation layers: against dense numpy, and the fused paths against PyG's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambarec_pyg.data.graphs import normalized_adjacency
from mambarec_pyg.nn.conv import (LightGCNPropagation, WeightedPropagation,
                                  lightgcn_mean, sparse_propagate, transpose_sparse)



def _graph(U=9, N=7, E=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.stack([torch.randint(0, U, (E, ), generator=g),
                              torch.randint(0, N, (E, ), generator=g)])
    return normalized_adjacency(edge_index, U, N, dtype=torch.float64, layout='csr')


def _random_sparse(M, N, nnz, seed=0):
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(M, N, dtype=torch.float64)
    dense[torch.randint(0, M, (nnz, ), generator=g),
          torch.randint(0, N, (nnz, ), generator=g)] = torch.rand(nnz, generator=g,
                                                                  dtype=torch.float64)
    return dense


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('layers', [0, 1, 4])
def test_lightgcn_layer_mean_matches_dense_powers(fused, layers):
    g = _graph()
    L = g.adj.to_dense().numpy()
    x = np.random.default_rng(0).normal(size=(L.shape[0], 5))
    expected = sum(np.linalg.matrix_power(L, l) @ x for l in range(layers + 1))
    expected /= layers + 1
    out = LightGCNPropagation(layers, fused=fused)(torch.tensor(x), g.adj)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_fused_lightgcn_matches_lgconv_values_and_gradients():
    g = _graph(U=30, N=20, E=120)
    x = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 8, dtype=torch.float64)
    plain = LightGCNPropagation(4, fused=False)(x, g.adj)
    (grad_plain, ) = torch.autograd.grad((plain * weight).sum(), x)
    fused = LightGCNPropagation(4, fused=True)(x, g.adj)
    (grad_fused, ) = torch.autograd.grad((fused * weight).sum(), x)
    torch.testing.assert_close(fused, plain, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad_fused, grad_plain, rtol=1e-13, atol=1e-15)


def test_fused_lightgcn_non_symmetric_needs_transpose():
    A = _random_sparse(6, 6, 15)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    csr = A.to_sparse_csr()
    out = lightgcn_mean(x, csr, 3, transpose_sparse(csr))
    (grad, ) = torch.autograd.grad(out.sum(), x)
    expected = (x + A @ x + A @ A @ x + A @ A @ A @ x) / 4
    (grad_expected, ) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, grad_expected)


@pytest.mark.parametrize('shape', [(6, 6), (4, 7)])
def test_weighted_propagation_fused_and_pyg_match_dense(shape):
    A = _random_sparse(*shape, 12, seed=3)
    x = torch.randn(shape[1], 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(shape[0], 4, dtype=torch.float64)
    expected = A @ x
    (grad_expected, ) = torch.autograd.grad((expected * weight).sum(), x)
    csr = A.to_sparse_csr()
    target, source = A.nonzero().t()
    edge_index = torch.stack([source, target])  # PyG: row 0 sources, row 1 targets
    outputs = {
        'pyg-csr': WeightedPropagation()(x, csr),
        'pyg-edge_index': WeightedPropagation()(x, edge_index, A[target, source],
                                                size=(shape[1], shape[0])),
        'fused': sparse_propagate(csr, x, transpose_sparse(csr)),
        'fused-no-transpose-given': sparse_propagate(csr, x),
    }
    for name, out in outputs.items():
        (grad, ) = torch.autograd.grad((out * weight).sum(), x)
        torch.testing.assert_close(out, expected, msg=name)
        torch.testing.assert_close(grad, grad_expected, msg=name)


def test_transpose_sparse():
    A = _random_sparse(4, 5, 8)
    for sp in (A.to_sparse_csr(), A.to_sparse()):
        t = transpose_sparse(sp)
        assert t.layout == sp.layout
        torch.testing.assert_close(t.to_dense(), A.t())
