"""LayerGCN against a plain dense computation (layer refinement, summed layers, the
summed BPR and L2 terms, gradients), its alternating edge pruning (degree-sensitive
in even epochs, uniform in odd ones, re-normalised, eval on the full graph), and it
learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, numpy_bipartite_adjacency,
                     random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import LayerGCN, LayerGCNConfig
from mambarec_pyg.nn.pruning import degree_sensitive_sample, uniform_sample

UI = ('user', 'interacts', 'item')


def _build(data, **kwargs) -> LayerGCN:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return LayerGCN(data, LayerGCNConfig(**kwargs))


def _numpy_adjacency(data, edges=None, eps=0.0):
    A = numpy_bipartite_adjacency(data, edges)
    deg = A.sum(1)
    inv = np.where(deg > 0, deg + eps, 1.0) ** -0.5
    return torch.from_numpy(inv[:, None] * A * inv[None, :])


def _plain(model, A):
    """The refined layers with a dense adjacency and an explicit cosine."""
    E0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h, out = E0, 0
    for _ in range(model.config.n_layers):
        h = A @ h
        cos = (h * E0).sum(1) / (h.norm(dim=1) * E0.norm(dim=1))
        h = cos[:, None] * h
        out = out + h
    U = model.num_users
    return out[:U], out[U:]


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.dropout'):
        LayerGCNConfig(dropout=1.0)
    with pytest.raises(ConfigError, match='model.n_layers'):
        LayerGCNConfig(n_layers=0)
    assert LayerGCNConfig.GRID == {'model.dropout': [0.0, 0.1, 0.2],
                                   'model.reg_weight': [1e-2, 1e-3, 1e-4, 1e-5]}


def test_forward_loss_and_gradients_match_a_plain_computation(tiny_data):
    model = _build(tiny_data, n_layers=3, reg_weight=0.3).eval()
    A = _numpy_adjacency(tiny_data)
    for got, want in zip(model.embed(), _plain(model, A)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    batch = random_batch(tiny_data, 40, seed=1)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    u, i, j = batch
    user, item = _plain(model, A)
    bpr = -F.logsigmoid((user[u] * item[i]).sum(1) - (user[u] * item[j]).sum(1)).sum()
    Eu, Ei = model.user_embedding.weight, model.item_embedding.weight
    reg = 0.3 * 0.5 * (Eu[u].pow(2).sum() + Ei[i].pow(2).sum() + Ei[j].pow(2).sum())
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    (bpr + reg).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_pruning_alternates_renormalises_and_eval_uses_the_full_graph(tiny_data):
    model = _build(tiny_data, dropout=0.2, n_layers=2).train()
    U = model.num_users
    E = tiny_data[UI].edge_index
    train_pairs = set(zip(E[0].tolist(), E[1].tolist()))
    assert model.pruning.num_kept == int(len(train_pairs) * 0.8)
    # even epochs: degree-sensitive, odd epochs: uniform (the same generator draws)
    for epoch, plain in ((0, lambda g: degree_sensitive_sample(
            model.pruning.edge_weight, model.pruning.num_kept, g)),
            (1, lambda g: uniform_sample(model.pruning.edge_weight.numel(),
                                         model.pruning.num_kept, g)),
            (2, lambda g: degree_sensitive_sample(
                model.pruning.edge_weight, model.pruning.num_kept, g))):
        got = model.sample_edges(epoch, torch.Generator().manual_seed(5))
        assert torch.equal(got, plain(torch.Generator().manual_seed(5)))
    assert not torch.equal(model.sample_edges(0, torch.Generator().manual_seed(5)),
                           model.sample_edges(1, torch.Generator().manual_seed(5)))

    torch.manual_seed(3)
    model.on_epoch_start(1)
    P = model.graphs['pruned'].to_dense()
    rows, cols = P[:U, U:].nonzero(as_tuple=True)
    kept = set(zip(rows.tolist(), cols.tolist()))
    assert len(kept) == model.pruning.num_kept and kept <= train_pairs
    want = _numpy_adjacency(tiny_data, np.array(sorted(kept)).T, eps=1e-7)
    torch.testing.assert_close(P, want, rtol=1e-12, atol=0)
    for got, plain in zip(model.embed(), _plain(model, P)):  # training: pruned
        torch.testing.assert_close(got, plain, rtol=1e-10, atol=1e-12)
    full = _numpy_adjacency(tiny_data)
    for got, plain in zip(model.eval_embeddings(), _plain(model, full)):
        torch.testing.assert_close(got, plain, rtol=1e-10, atol=1e-12)


def test_uniform_pruning_is_uniform():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        keep = uniform_sample(6, 2, g)
        assert keep.unique().numel() == 2 and bool((keep[1:] > keep[:-1]).all())
        counts[keep] += 1
    freq = counts / 3000  # each edge kept with probability 1/3
    assert bool(((freq - 1 / 3).abs() < 4.5 * (2 / 9 / 3000) ** 0.5).all())


def test_no_pruning_with_dropout_zero(tiny_data):
    model = _build(tiny_data, dropout=0.0, n_layers=2).train()
    state = torch.get_rng_state()
    model.on_epoch_start(0)
    assert 'pruned' not in model.graphs and torch.equal(state, torch.get_rng_state())


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'layergcn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '8')
    assert_beats_popularity(results, tiny_data)
