"""SelfCF (MMRec's SELFCFED_LGN) against a plain dense computation: the eval-mode
scores, the training loss with the graph's and the target views' dropout replayed
from the same seed, the gradients, the dropped graph's transpose; and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import (assert_beats_popularity, default_dtype, numpy_bipartite_adjacency,
                     random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import SelfCF, SelfCFConfig


def _build(data, **kwargs) -> SelfCF:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return SelfCF(data, SelfCFConfig(**kwargs))


def _numpy_adjacency(data):
    A = numpy_bipartite_adjacency(data)
    deg = A.sum(1)
    inv = np.where(deg > 0, deg, 1.0) ** -0.5
    return torch.from_numpy(inv[:, None] * A * inv[None, :])


def _encode(model, A):
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    out, h = E, E
    for _ in range(model.config.n_layers):
        h = A @ h
        out = out + h
    out = out / (model.config.n_layers + 1)
    U = model.num_users
    return out[:U], out[U:]


def _predict(model, x):
    return x @ model.predictor.weight.t() + model.predictor.bias


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.dropout'):
        SelfCFConfig(dropout=1.0)
    assert SelfCFConfig.GRID['model.reg_weight'] == [0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0]


def test_scores_match_a_plain_computation(tiny_data):
    model = _build(tiny_data, n_layers=2).eval()
    U, I = _encode(model, _numpy_adjacency(tiny_data))
    user, item = model.embed()
    scores = user @ item.t()
    want = _predict(model, U) @ I.t() + U @ _predict(model, I).t()
    torch.testing.assert_close(scores, want, rtol=1e-10, atol=1e-12)


def test_dropped_graph_and_its_transpose(tiny_data):
    model = _build(tiny_data)
    A = _numpy_adjacency(tiny_data)
    rows, cols = np.nonzero(A.numpy())  # row-major: the CSR order of the entries
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(rows.size, generator=g) >= 0.4
    dropped, transpose = model.dropped_adjacency(keep, 0.4)
    want = torch.zeros_like(A)
    want[rows, cols] = A[rows, cols] * keep.double() / 0.6
    torch.testing.assert_close(dropped.to_dense(), want)
    torch.testing.assert_close(transpose.to_dense(), want.t())
    assert not torch.equal(want, want.t())  # the two directions drop independently


@pytest.mark.parametrize('dropout', [0.3, 0.0])
def test_training_loss_and_gradients_match_a_plain_computation(tiny_data, dropout):
    model = _build(tiny_data, n_layers=2, dropout=dropout, reg_weight=0.2).train()
    batch = random_batch(tiny_data, 40, seed=2)
    torch.manual_seed(11)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'align', 'reg'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    # replay the draws: the rate, the entries' masks, then the two target views
    A = _numpy_adjacency(tiny_data)
    rows, cols = np.nonzero(A.numpy())
    torch.manual_seed(11)
    rate = float(torch.rand(()))
    keep = torch.rand(rows.size) >= rate
    D = torch.zeros_like(A)
    D[rows, cols] = A[rows, cols] * keep.double() / (1 - rate)
    U, I = _encode(model, D)
    users, items = batch[0], batch[1]
    u, i = U[users], I[items]
    d = u.size(1)
    if dropout > 0:
        keep = 1 - dropout
        mu = (torch.rand(40, d, dtype=torch.float64) >= dropout).double() / keep
        mi = (torch.rand(40, d, dtype=torch.float64) >= dropout).double() / keep
    else:
        mu = mi = torch.ones(40, d, dtype=torch.float64)
    ut, it = (u * mu).detach(), (i * mi).detach()
    pu, pi = _predict(model, u), _predict(model, i)

    def cos(a, b):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    align = -cos(pu, it).mean() / 2 - cos(pi, ut).mean() / 2
    reg = 0.2 * 0.5 * (u.pow(2).sum() + i.pow(2).sum())
    torch.testing.assert_close(parts['align'], align)
    torch.testing.assert_close(parts['reg'], reg)
    (align + reg).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-11,
                                   msg=name)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'selfcf', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '10')
    assert_beats_popularity(results, tiny_data)
