"""DegreeSensitivePruning against a plain computation: the kept count, the kept edges
(training pairs, drawn like degree_sensitive_sample), the re-normalised mirrored
adjacency (numpy), and draws seeded from the global RNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import numpy_bipartite_adjacency

from mambarec_pyg.models.base import user_item_matrices
from mambarec_pyg.data.transforms import UserItemNorm
from mambarec_pyg.nn.pruning import DegreeSensitivePruning, degree_sensitive_sample

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def r_hat(tiny_data):
    return user_item_matrices(UserItemNorm()(tiny_data), torch.float64)[1]


def test_edges_weights_and_count(tiny_data, r_hat):
    pruning = DegreeSensitivePruning(r_hat, 0.7)
    E = tiny_data[UI].edge_index
    assert pruning.num_kept == int(E.size(1) * 0.3)
    pairs = set(zip(pruning.edge_user.tolist(), pruning.edge_item.tolist()))
    assert pairs == set(zip(E[0].tolist(), E[1].tolist()))
    du = torch.bincount(E[0], minlength=tiny_data['user'].num_nodes).double()
    di = torch.bincount(E[1], minlength=tiny_data['item'].num_nodes).double()
    want = (du[pruning.edge_user] * di[pruning.edge_item]).rsqrt()
    torch.testing.assert_close(pruning.edge_weight, want, rtol=1e-12, atol=0)
    assert pruning.state_dict() == {}
    with pytest.raises(ValueError, match='dropout'):
        DegreeSensitivePruning(r_hat, 1.0)


def test_draw_matches_numpy_renormalisation(tiny_data, r_hat):
    pruning = DegreeSensitivePruning(r_hat, 0.6)
    U = tiny_data['user'].num_nodes
    got = pruning(torch.float64, torch.Generator().manual_seed(4)).to_dense().numpy()
    keep = degree_sensitive_sample(pruning.edge_weight, pruning.num_kept,
                                   torch.Generator().manual_seed(4))
    edges = np.stack([pruning.edge_user[keep].numpy(), pruning.edge_item[keep].numpy()])
    A = numpy_bipartite_adjacency(tiny_data, edges)
    inv = (A.sum(1) + 1e-7) ** -0.5
    np.testing.assert_allclose(got, inv[:, None] * A * inv[None, :], rtol=1e-12,
                               atol=0)
    assert (got[:U, U:] != 0).sum() == pruning.num_kept


def test_draws_follow_the_global_rng(r_hat):
    pruning = DegreeSensitivePruning(r_hat, 0.5)
    torch.manual_seed(3)
    a = pruning().to_dense()
    b = pruning().to_dense()
    torch.manual_seed(3)
    assert torch.equal(pruning().to_dense(), a) and not torch.equal(a, b)
