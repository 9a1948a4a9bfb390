"""FREEDOM against plain computations (numpy kNN graphs, dense adjacency powers,
full-table projections), its degree-sensitive edge pruning (kept count,
re-normalisation, eval mode on the full graph, sampling probabilities), and it
learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     numpy_bipartite_adjacency, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models import FREEDOM, FREEDOMConfig
from mambarec_pyg.models.freedom import modality_weights

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> FREEDOM:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return FREEDOM(data, FREEDOMConfig(**kwargs))


def _numpy_adjacency(data, edges=None, eps=0.0):
    """D^-1/2 A D^-1/2 of the (U+N) bipartite graph, degrees + eps (MMRec: 1e-7;
    the shared full graph has none, the pruned graph has it)."""
    A = numpy_bipartite_adjacency(data, edges)
    inv = np.where(A.sum(1) > 0, A.sum(1) + eps, 1.0) ** -0.5
    return inv[:, None] * A * inv[None, :]


def _numpy_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Binary top-k cosine graph (self included), sym-normalised by row sums."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    A = np.zeros_like(sim)
    for i in range(len(sim)):
        A[i, np.argsort(-sim[i], kind='stable')[:k]] = 1.0
    d = A.sum(1) ** -0.5
    return d[:, None] * A * d[None, :]


def _batch(data) -> BPRBatch:
    return random_batch(data, 48, seed=1)


def test_mixing_weights():
    assert modality_weights(['text'], 0.1) == {'text': 1.0}
    assert modality_weights(['image', 'text'], 0.1) == {'image': 0.1, 'text': 0.9}
    w = modality_weights(['image', 'text', 'audio'], 0.1)
    assert w['image'] == 0.1 and w['text'] == pytest.approx(0.45) == w['audio']
    assert modality_weights(['text', 'audio'], 0.1) == {'text': 0.5, 'audio': 0.5}


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.dropout'):
        FREEDOMConfig(dropout=1.0)
    with pytest.raises(ConfigError, match='model.mm_image_weight'):
        FREEDOMConfig(mm_image_weight=1.5)
    assert FREEDOMConfig.GRID == {'model.dropout': [0.8, 0.9],
                                  'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3]}


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_frozen_item_graph_matches_numpy_knn(variants, variant):
    data = variants[variant]
    model = _build(data, knn_k=5, mm_image_weight=0.3)
    weights = {'image+text': {'image': 0.3, 'text': 0.7}, 'text': {'text': 1.0},
               'image+text+audio': {'image': 0.3, 'text': 0.35, 'audio': 0.35}}[variant]
    S = sum(w * _numpy_knn(data['item'][m].double().numpy(), 5)
            for m, w in weights.items())
    got = model.graphs['item_graph'].to_dense().numpy()
    np.testing.assert_allclose(got, S, rtol=1e-12, atol=1e-15)
    # every single-modality entry is 1/k
    single = _numpy_knn(data['item']['text'].double().numpy(), 5)
    assert set(np.unique(single).round(12)) == {0.0, 0.2}


@pytest.mark.parametrize('variant', ['image+text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant):
    data = variants[variant]
    model = _build(data, n_mm_layers=2, n_ui_layers=2, knn_k=4, reg_weight=0.3)
    model.eval()  # the full graph (training mode is checked with the pruned one)
    U = model.num_users
    A = torch.from_numpy(_numpy_adjacency(data))
    weights = modality_weights(model.modalities, 0.1)
    S = torch.from_numpy(sum(w * _numpy_knn(data['item'][m].double().numpy(), 4)
                             for m, w in weights.items()))
    Eu, Ei = model.user_embedding.weight, model.item_embedding.weight

    def plain():
        h = S @ (S @ Ei)
        E = torch.cat([Eu, Ei])
        E = (E + A @ E + A @ (A @ E)) / 3
        return E[:U], E[U:] + h

    user, item = model.embed()
    pu, pi = plain()
    torch.testing.assert_close(user, pu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, pi, rtol=1e-10, atol=1e-12)

    batch = _batch(data)
    u, i, j = batch
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'modality_bpr'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    pu, pi = plain()
    eu = pu[u]
    bpr = -F.logsigmoid((eu * pi[i]).sum(1) - (eu * pi[j]).sum(1)).mean()
    modal = 0.0
    for m in model.modalities:  # whole-table projection, then the rows (MMRec)
        lin = model.projections[m]
        T = model.features[m] @ lin.weight.t() + lin.bias
        modal = modal - F.logsigmoid((eu * T[i]).sum(1) - (eu * T[j]).sum(1)).mean()
    total = bpr + 0.3 * modal
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['modality_bpr'], modal)
    torch.testing.assert_close(parts['total'], total)
    total.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_reg_weight_zero_leaves_out_the_modality_terms(tiny_data):
    model = _build(tiny_data, reg_weight=0.0, knn_k=4).eval()
    batch = _batch(tiny_data)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr'}
    u, i, j = batch
    user, item = model.embed()
    bpr = -F.logsigmoid((user[u] * item[i]).sum(1) - (user[u] * item[j]).sum(1))
    torch.testing.assert_close(parts['total'], bpr.mean())
    parts['total'].backward()
    assert all(p.grad is None for p in model.features.values())
    assert model.item_embedding.weight.grad.abs().sum() > 0


def test_pruning_keeps_the_count_renormalises_and_eval_uses_the_full_graph(tiny_data):
    model = _build(tiny_data, dropout=0.8, knn_k=4)
    U, N = model.num_users, model.num_items
    E = tiny_data[UI].edge_index
    assert model.pruning.num_kept == int(E.size(1) * 0.2) == 155
    train_pairs = set(zip(E[0].tolist(), E[1].tolist()))
    # sampling weights are 1/sqrt(d_u d_i)
    du = torch.bincount(E[0], minlength=U).double()
    di = torch.bincount(E[1], minlength=N).double()
    p = model.pruning
    w = dict(zip(zip(p.edge_user.tolist(), p.edge_item.tolist()),
                 p.edge_weight.tolist()))
    assert set(w) == train_pairs
    for (a, b), value in w.items():
        assert value == pytest.approx(1 / float(du[a] * di[b]) ** 0.5, rel=1e-12)

    torch.manual_seed(3)
    model.train()
    model.on_epoch_start(0)
    P = model.graphs['pruned'].to_dense()
    torch.testing.assert_close(P, P.t())
    assert not P[:U, :U].any() and not P[U:, U:].any()
    rows, cols = P[:U, U:].nonzero(as_tuple=True)
    kept = set(zip(rows.tolist(), cols.tolist()))
    assert len(kept) == 155 and kept <= train_pairs
    kept_edges = np.array(sorted(kept)).T
    want = _numpy_adjacency(tiny_data, kept_edges, eps=1e-7)
    np.testing.assert_allclose(P.numpy(), want, rtol=1e-12, atol=0)

    S = model.graphs['item_graph'].to_dense()  # (checked against numpy above)
    Eu, Ei = model.user_embedding.weight, model.item_embedding.weight

    def plain(A):
        x = torch.cat([Eu, Ei])
        x = (x + A @ x + A @ (A @ x)) / 3
        return x[:U], x[U:] + S @ Ei

    for got, want in zip(model.embed(), plain(P)):  # training mode: pruned
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    full = torch.from_numpy(_numpy_adjacency(tiny_data))
    for got, want in zip(model.eval_embeddings(), plain(full)):  # eval: full
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    model.eval()
    for got, want in zip(model.embed(), plain(full)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_pruning_draws_from_the_global_rng(tiny_data):
    model = _build(tiny_data, dropout=0.9, knn_k=4).train()

    def graph(seed=None):
        if seed is not None:
            torch.manual_seed(seed)
        model.on_epoch_start(0)
        return model.graphs['pruned'].to_dense()

    a = graph(7)
    after = torch.get_rng_state()
    b = graph()
    c = graph(7)
    assert torch.equal(a, c) and not torch.equal(a, b)  # repeatable, new each epoch
    torch.set_rng_state(after)  # a resumed run restores the global RNG
    assert torch.equal(graph(), b)
    assert (a[:model.num_users] != 0).sum() == int(777 * (1 - 0.9))


def test_no_pruning_with_dropout_zero(tiny_data):
    model = _build(tiny_data, dropout=0.0, knn_k=4).train()
    state = torch.get_rng_state()
    model.on_epoch_start(0)
    assert 'pruned' not in model.graphs and torch.equal(state, torch.get_rng_state())
    for a, b in zip(model.embed(), model.eval_embeddings()):
        torch.testing.assert_close(a, b)


def _toy_graph():
    """4 users, 4 items, 7 edges with user degrees 3, 2, 1, 1 and item degrees
    3, 2, 1, 1: weights 1/sqrt(d_u d_i) from 1/3 to 1."""
    data = HeteroData()
    data['user'].num_nodes = 4
    data['item'].num_nodes = 4
    data['item']['text'] = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0],
                                         [0.2, 0.8]])
    data.modalities = ('text', )
    data[UI].edge_index = torch.tensor([[0, 0, 0, 1, 1, 2, 3],
                                        [0, 1, 2, 0, 1, 0, 3]])
    return data


@pytest.mark.parametrize('dropout, keep', [(0.9, 1), (0.7, 2)])
def test_sampling_probability_follows_inverse_sqrt_degrees(dropout, keep):
    data = _toy_graph()
    model = _build(data, dropout=dropout, knn_k=2)
    assert model.pruning.num_kept == keep
    user, item = model.pruning.edge_user.numpy(), model.pruning.edge_item.numpy()
    du = np.bincount(user, minlength=4)
    di = np.bincount(item, minlength=4)
    p = 1.0 / np.sqrt(du[user] * di[item])
    p = p / p.sum()
    # inclusion probability of successive sampling without replacement
    if keep == 1:
        expected = p
    else:
        expected = np.array([p[e] + sum(p[f] * p[e] / (1 - p[f])
                                        for f in range(len(p)) if f != e)
                             for e in range(len(p))])
    n = 10000
    g = torch.Generator().manual_seed(0)
    counts = np.zeros(len(p))
    for _ in range(n):
        sample = model.pruning.sample(g).numpy()
        assert len(set(sample.tolist())) == keep  # without replacement
        counts[sample] += 1
    freq = counts / n
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) < 4.5 * se), (freq, expected)
    if keep == 1:  # chi-square goodness of fit of the single draw
        chi2 = ((counts - n * p) ** 2 / (n * p)).sum()
        assert chi2 < 22.5  # 6 degrees of freedom: p-value ~0.001
    # edges between high-degree nodes are dropped more often
    assert freq[0] < freq[1] < freq[-1]


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'freedom', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '8')
    assert_beats_popularity(results, tiny_data)
