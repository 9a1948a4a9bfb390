"""LightGCN against a plain numpy computation (dense powers of the normalised
adjacency), and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import (assert_beats_popularity, default_dtype,
                     numpy_bipartite_adjacency, random_batch, train_through_cli)

from mambarec_pyg.models import LightGCN, LightGCNConfig


def _numpy_adjacency(data):
    A = numpy_bipartite_adjacency(data)
    deg = A.sum(1) + 1e-7  # MMRec's epsilon: no visible difference
    inv = deg ** -0.5
    return inv[:, None] * A * inv[None, :]


@pytest.mark.parametrize('layers', [0, 1, 3])
def test_embeddings_and_loss_match_numpy(tiny_data, layers):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = LightGCN(tiny_data, LightGCNConfig(embedding_size=8, n_layers=layers,
                                                   reg_weight=0.2))
    U = tiny_data['user'].num_nodes
    E0 = torch.cat([model.user_embedding.weight,
                    model.item_embedding.weight]).detach().numpy()
    A = _numpy_adjacency(tiny_data)
    layers_out = [E0]
    for _ in range(layers):
        layers_out.append(A @ layers_out[-1])
    E = np.mean(layers_out, axis=0)
    user, item = model.embed()
    # (MMRec's 1e-7 degree epsilon moves values by ~1e-9: below float32 resolution)
    np.testing.assert_allclose(user.detach().numpy(), E[:U], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(item.detach().numpy(), E[U:], rtol=1e-6, atol=1e-8)

    batch = random_batch(tiny_data, 32, seed=1)
    u, i, j = (t.numpy() for t in batch)
    x = (E[u] * E[U + i]).sum(1) - (E[u] * E[U + j]).sum(1)
    bpr = -np.log(1e-10 + 1 / (1 + np.exp(-x))).mean()
    reg = 0.2 * (np.linalg.norm(E0[u]) + np.linalg.norm(E0[U + i]) +
                 np.linalg.norm(E0[U + j])) / 32  # on the layer-0 embeddings
    parts = model.loss(batch)
    assert parts['bpr'].item() == pytest.approx(bpr, rel=1e-6)
    assert parts['reg'].item() == pytest.approx(reg, rel=1e-10)


def test_fused_propagation_matches_plain_gradients(tiny_data):
    torch.manual_seed(0)
    fused = LightGCN(tiny_data, LightGCNConfig(n_layers=3)).double()
    plain = LightGCN(tiny_data, LightGCNConfig(n_layers=3)).double()
    plain.load_state_dict(fused.state_dict())
    plain.propagation.fused = False
    for m in (fused, plain):
        m.embed()[0].sum().mul(2).add(m.embed()[1].square().sum()).backward()
    torch.testing.assert_close(fused.user_embedding.weight.grad,
                               plain.user_embedding.weight.grad)
    torch.testing.assert_close(fused.item_embedding.weight.grad,
                               plain.item_embedding.weight.grad)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'lightgcn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '12')
    assert_beats_popularity(results, tiny_data)
