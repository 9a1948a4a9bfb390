"""BPR-MF against a plain numpy computation of MMRec's formulas, and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import assert_beats_popularity, random_batch, train_through_cli

from mambarec_pyg.models import BPR, BPRConfig


def test_scores_and_loss_match_numpy(tiny_data):
    torch.manual_seed(0)
    model = BPR(tiny_data, BPRConfig(embedding_size=8, reg_weight=0.3)).double()
    batch = random_batch(tiny_data)
    P = model.user_embedding.weight.detach().numpy()
    Q = model.item_embedding.weight.detach().numpy()
    user, item = model.embed()
    np.testing.assert_allclose((user @ item.t()).detach().numpy(), P @ Q.T)
    u, i, j = (t.numpy() for t in batch)
    x = (P[u] * Q[i]).sum(1) - (P[u] * Q[j]).sum(1)
    bpr = -np.log(1e-10 + 1 / (1 + np.exp(-x))).mean()  # MMRec's BPRLoss
    reg = 0.3 * (np.linalg.norm(P[u]) + np.linalg.norm(Q[i]) +
                 np.linalg.norm(Q[j])) / len(u)  # EmbLoss: Frobenius, not squared
    parts = model.loss(batch)
    assert parts['bpr'].item() == pytest.approx(bpr, rel=1e-8)
    assert parts['reg'].item() == pytest.approx(reg, rel=1e-12)
    assert parts['total'].item() == pytest.approx(bpr + reg, rel=1e-8)


def test_xavier_normal_initialisation(tiny_data):
    torch.manual_seed(0)
    w = BPR(tiny_data).user_embedding.weight
    fan_in, fan_out = w.shape[1], w.shape[0]
    std = (2.0 / (fan_in + fan_out)) ** 0.5
    assert w.std().item() == pytest.approx(std, rel=0.1)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'bpr', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '20')
    assert_beats_popularity(results, tiny_data)
