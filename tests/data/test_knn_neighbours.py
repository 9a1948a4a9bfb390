"""The kNN selection shared by the item-item graphs and LATTICE's learned graph:
:func:`knn_neighbours` against numpy, and the fast top-k selection against the plain
tie rule on rows full of ties."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambarec_pyg.data.graphs import (_topk_lowest_index, _topk_lowest_index_plain,
                                      knn_neighbours)


@pytest.mark.parametrize('k', [1, 3, 10, 30])
def test_fast_selection_matches_the_tie_rule(k):
    for trial in range(10):
        g = torch.Generator().manual_seed(trial)
        sim = torch.randint(0, 4, (50, 30), generator=g).float()  # many ties
        sim[::3] = torch.rand(17, 30, generator=g)                  # and rows without
        fast, plain = _topk_lowest_index(sim, k), _topk_lowest_index_plain(sim, k)
        assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


def test_knn_neighbours_matches_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x[5] = 0.0  # a zero row: similarity 0 to everything
    row, col, sim = knn_neighbours(x, 4, chunk_size=7)
    xn = x.numpy() / np.maximum(np.linalg.norm(x.numpy(), axis=1, keepdims=True),
                                1e-300)
    S = xn @ xn.T
    for i in range(40):
        want = np.sort(np.argsort(-S[i], kind='stable')[:4])
        assert row[4 * i:4 * i + 4].tolist() == [i] * 4
        assert col[4 * i:4 * i + 4].tolist() == want.tolist()
        np.testing.assert_allclose(sim[4 * i:4 * i + 4].numpy(), S[i, want],
                                   rtol=1e-12, atol=1e-15)
    assert col[20:24].tolist() == [0, 1, 2, 3]  # the zero row: ties, lowest ids


def test_shrunk_similarity_matches_numpy():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=torch.float64)
    row, col, sim = knn_neighbours(x, 3, chunk_size=4, shrink=2.5)
    n = np.linalg.norm(x.numpy(), axis=1)
    S = (x.numpy() @ x.numpy().T) / (n[:, None] * n[None, :] + 2.5)
    for i in range(30):
        want = np.sort(np.argsort(-S[i], kind='stable')[:3])
        assert col[3 * i:3 * i + 3].tolist() == want.tolist()
        np.testing.assert_allclose(sim[3 * i:3 * i + 3].numpy(), S[i, want],
                                   rtol=1e-12)
