"""The graphs built before training, against plain numpy computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mambarec_pyg.data.errors import DataError
from mambarec_pyg.data.graphs import (item_item_graph, normalized_adjacency,
                                      sparse_from_edges, to_sparse)



def _dense(adj) -> np.ndarray:
    return adj.to_dense().numpy()


def _numpy_adjacency(users, items, U, N):
    A = np.zeros((U + N, U + N))
    A[users, U + items] = 1.0
    A[U + items, users] = 1.0
    deg = A.sum(1)
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    return inv[:, None] * A * inv[None, :]


def _numpy_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Dense reference: cosine similarity (zero rows: 0), top-k per row with the
    lower column winning ties, W -> D^-1/2 W D^-1/2 with the row sums as D."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    xn = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    sim = xn @ xn.T
    W = np.zeros_like(sim)
    for i in range(len(x)):
        order = sorted(range(len(x)), key=lambda j: (-sim[i, j], j))[:k]
        W[i, order] = sim[i, order]
    deg = W.sum(1)
    inv = np.zeros_like(deg)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    return inv[:, None] * W * inv[None, :]


@pytest.mark.parametrize('layout', ['csr', 'coo'])
def test_normalized_adjacency_matches_numpy(layout):
    rng = np.random.default_rng(0)
    U, N = 7, 5
    users = rng.integers(0, U - 1, 20)   # user U-1 has no interaction
    items = rng.integers(0, N - 1, 20)   # item N-1 has no interaction
    users = np.append(users, users[0])   # a repeated pair counts once
    items = np.append(items, items[0])
    edge_index = torch.tensor(np.stack([users, items]))
    g = normalized_adjacency(edge_index, U, N, dtype=torch.float64, layout=layout)
    expected = _numpy_adjacency(users, items, U, N)
    np.testing.assert_allclose(_dense(g.adj), expected, rtol=1e-14, atol=0)
    np.testing.assert_allclose(_dense(g.r_hat), expected[:U, U:], rtol=1e-14, atol=0)
    np.testing.assert_array_equal(_dense(g.adj), _dense(g.adj).T)
    assert not np.isnan(_dense(g.adj)).any()
    assert g.adj.layout == (torch.sparse_csr if layout == 'csr' else torch.sparse_coo)


def test_normalized_adjacency_rejects_bad_ids():
    with pytest.raises(DataError, match=r'edge_index\[:, 1\] has item id 9'):
        normalized_adjacency(torch.tensor([[0, 1], [0, 9]]), 2, 3)
    with pytest.raises(DataError, match='shape'):
        normalized_adjacency(torch.tensor([0, 1]), 2, 3)


def test_item_item_graph_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6))
    x[4] = 0.0            # an all-zero row
    x[7] = x[2] * 3.0     # same direction as row 2: a tie in every other row
    for k in (1, 3, 12):
        S = item_item_graph(torch.tensor(x), k, layout='csr')
        got = _dense(S)
        np.testing.assert_allclose(got, _numpy_knn(x, k), rtol=1e-12, atol=1e-15)
        assert np.isfinite(got).all()
        assert (got[4] == 0).all()  # zero row: zero similarity to everything
        # Exactly k stored entries per row.
        assert (S.crow_indices().diff() == k).all()


def test_item_item_graph_chunking_and_ties_are_deterministic():
    x = torch.tensor(np.random.default_rng(2).normal(size=(30, 5)))
    x[10:15] = x[3]  # six identical rows: many exact ties
    a = _dense(item_item_graph(x, 4))
    b = _dense(item_item_graph(x, 4, chunk_size=7))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(a != 0, b != 0)
    # Among the identical rows the lowest ids are kept.
    kept = np.nonzero(a[3])[0]
    np.testing.assert_array_equal(kept, [3, 10, 11, 12])


def test_item_item_graph_float32_like_released(released_tiny_dir):
    outputs = np.load(released_tiny_dir / 'outputs.npz')
    for m in ('image', 'text'):
        x = torch.from_numpy(np.load(released_tiny_dir / 'tiny' / f'{m}_feat.npy'))
        S = item_item_graph(x, 10, dtype=torch.float64, layout='csr')
        expected = outputs[f'{m}_item_graph']
        np.testing.assert_array_equal(_dense(S) != 0, expected != 0)
        np.testing.assert_allclose(_dense(S), expected, rtol=1e-6, atol=1e-7)


def test_normalized_adjacency_like_released(released_tiny_dir):
    outputs = np.load(released_tiny_dir / 'outputs.npz')
    frame = pd.read_csv(released_tiny_dir / 'tiny' / 'tiny.inter', sep='\t')
    train = frame[frame.x_label == 0]
    edge_index = torch.tensor(np.stack([train.userID.values, train.itemID.values]))
    g = normalized_adjacency(edge_index, 40, 30, dtype=torch.float64, layout='csr')
    np.testing.assert_allclose(_dense(g.adj), outputs['norm_adj'], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(_dense(g.r_hat), outputs['R_hat'], rtol=1e-6, atol=1e-8)


def test_binary_item_item_graph_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(15, 4))
    k = 4
    S = _dense(item_item_graph(torch.tensor(x), k, weighting='binary', layout='csr'))
    # every kept entry is 1/k (FREEDOM's rule), on the same neighbours as the
    # similarity-weighted graph
    W = _numpy_knn(x, k)
    np.testing.assert_array_equal(S != 0, W != 0)
    np.testing.assert_allclose(S[S != 0], 1.0 / k, rtol=1e-14)


def test_user_item_weights_split_repeats():
    from mambarec_pyg.data.graphs import user_item_weights
    edge_index = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0]])  # (0, 0) twice
    w = user_item_weights(edge_index, 2, 2).numpy()
    # distinct degrees: user 0 -> 2 items, user 1 -> 1; item 0 -> 1 user, item 1 -> 2
    expected = np.array([1 / np.sqrt(2 * 1) / 2, 1 / np.sqrt(2 * 2), 1 / np.sqrt(1 * 2),
                         1 / np.sqrt(2 * 1) / 2])
    np.testing.assert_allclose(w, expected, rtol=1e-14)


def test_item_item_graph_rejects_bad_input():
    with pytest.raises(DataError, match='row 2 has a non-finite'):
        x = torch.rand(4, 3)
        x[2, 1] = float('nan')
        item_item_graph(x, 2)
    with pytest.raises(DataError, match='1 <= k <= N = 4'):
        item_item_graph(torch.rand(4, 3), 5)


def test_to_sparse_layouts():
    row, col = torch.tensor([0, 0, 2]), torch.tensor([1, 2, 0])
    value = torch.tensor([1.0, 2.0, 3.0])
    dense = torch.zeros(3, 3)
    dense[row, col] = value
    for layout in ('csr', 'coo', 'auto'):
        torch.testing.assert_close(to_sparse(row, col, value, (3, 3), layout).to_dense(),
                                   dense)
    with pytest.raises(ValueError, match='layout'):
        to_sparse(row, col, value, (3, 3), 'dense')


@pytest.mark.parametrize('reduce', ['sum', 'max'])
def test_sparse_from_edges_combines_repeated_edges(reduce):
    rng = np.random.default_rng(0)
    edge_index = torch.from_numpy(rng.integers(0, 5, (2, 60)))
    weight = torch.from_numpy(rng.standard_normal(60))
    got = sparse_from_edges(edge_index, weight, (5, 5), layout='csr',
                            reduce=reduce).to_dense().numpy()
    want = np.zeros((5, 5)) if reduce == 'sum' else np.full((5, 5), -np.inf)
    for (s, t), w in zip(edge_index.t().tolist(), weight.tolist()):
        want[t, s] = want[t, s] + w if reduce == 'sum' else max(want[t, s], w)
    want[np.isinf(want)] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match='reduce'):
        sparse_from_edges(edge_index, weight, (5, 5), reduce='mean')
