"""VBPR against a plain numpy computation of MMRec's formulas (1, 2 or 3 feature
tables), its initialisation, and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli, with_modalities)

from mambarec_pyg.models import VBPR, VBPRConfig


@pytest.mark.parametrize('names', [('text', ), ('image', 'text'),
                                   ('image', 'text', 'audio')])
def test_scores_and_loss_match_numpy(tiny_data, names):
    data = with_modalities(tiny_data, names)
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = VBPR(data, VBPRConfig(embedding_size=8, reg_weight=0.3))
    with torch.no_grad():  # a non-zero bias, so that it is checked too
        model.item_linear.bias.normal_()
    P = model.user_embedding.weight.detach().numpy()
    G = model.item_embedding.weight.detach().numpy()
    W = model.item_linear.weight.detach().numpy()
    b = model.item_linear.bias.detach().numpy()
    # the raw features, concatenated in data.modalities order, not normalised
    F = np.concatenate([data['item'][m].double().numpy() for m in names], axis=1)
    assert P.shape[1] == 16 and G.shape[1] == 8 and W.shape == (8, F.shape[1])
    Q = np.concatenate([G, F @ W.T + b], axis=1)
    user, item = model.embed()
    np.testing.assert_allclose(user.detach().numpy(), P)
    np.testing.assert_allclose(item.detach().numpy(), Q, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((user @ item.t()).detach().numpy(), P @ Q.T,
                               rtol=1e-12, atol=1e-12)

    batch = random_batch(data)
    u, i, j = (t.numpy() for t in batch)
    x = (P[u] * Q[i]).sum(1) - (P[u] * Q[j]).sum(1)
    bpr = -np.log(1e-10 + 1 / (1 + np.exp(-x))).mean()  # MMRec's BPRLoss
    # EmbLoss on the 2d-wide representations (projected content included)
    reg = 0.3 * (np.linalg.norm(P[u]) + np.linalg.norm(Q[i]) +
                 np.linalg.norm(Q[j])) / len(u)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    assert parts['bpr'].item() == pytest.approx(bpr, rel=1e-8)
    assert parts['reg'].item() == pytest.approx(reg, rel=1e-12)
    assert parts['total'].item() == pytest.approx(bpr + reg, rel=1e-8)


def test_initialisation_and_frozen_features(tiny_data):
    torch.manual_seed(0)
    model = VBPR(tiny_data)
    d = model.config.embedding_size
    w = model.item_linear.weight
    fan_out, fan_in = w.shape
    assert fan_in == sum(tiny_data['item'][m].size(1) for m in tiny_data.modalities)
    assert w.std().item() == pytest.approx((2.0 / (fan_in + fan_out)) ** 0.5,
                                           rel=0.1)  # Xavier-normal
    assert torch.all(model.item_linear.bias == 0)
    user = model.user_embedding.weight
    assert user.shape == (tiny_data['user'].num_nodes, 2 * d)
    bound = (6.0 / sum(user.shape)) ** 0.5  # Xavier-uniform
    assert user.abs().max().item() <= bound and user.abs().max().item() > 0.9 * bound
    # frozen raw features: a buffer, not a parameter, not saved
    names = {n for n, _ in model.named_parameters()}
    assert names == {'user_embedding.weight', 'item_embedding.weight',
                     'item_linear.weight', 'item_linear.bias'}
    assert 'content' not in model.state_dict()
    torch.testing.assert_close(model.content, torch.cat(
        [tiny_data['item'][m] for m in tiny_data.modalities], dim=1))
    model.loss(random_batch(tiny_data))['total'].backward()
    assert model.content.grad is None


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'vbpr', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '8')
    assert_beats_popularity(results, tiny_data)
