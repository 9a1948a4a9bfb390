"""DA-MRS against plain computations: the denoised kNN graphs and the behaviour
graph (numpy), the forward pass (dense propagation), and every loss part with its
gradients written as MMRec's code writes it (denoising weights, the log-sigmoid BPR,
the probability form of the symmetric KL, the tiled neighbour discrimination); and
it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, assert_grads_match, build_float64,
                     feature_variants, loss_and_grads, numpy_normalized_adjacency,
                     random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.data.transforms import DenoisedItemKNN, ItemCooccurrence
from mambarec_pyg.models import DAMRS, DAMRSConfig
from mambarec_pyg.models.damrs import neighbor_discrimination, symmetric_bernoulli_kl

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> DAMRS:
    return build_float64(DAMRS, data, **kwargs)


def _numpy_denoised(tables, k):
    """MMRec's get_knn_adj_mat, dense: similarities below their mean in any modality
    are masked in all; each row keeps its top-min(k, candidates) by similarity."""
    sims = []
    for x in tables:
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        sims.append((xn @ xn.T).astype(np.float64))
    mask = np.zeros_like(sims[0], dtype=bool)
    for s in sims:
        mask |= s < s.mean()
    graphs = []
    for s in sims:
        A = np.zeros_like(s)
        for i in range(len(s)):
            cand = np.flatnonzero(~mask[i])
            top = cand[np.argsort(-s[i, cand], kind='stable')[:k]]
            A[i, top] = 1.0
        d = A.sum(1) ** -0.5
        graphs.append(d[:, None] * A * d[None, :])
    return graphs


def _numpy_behavior(data, k):
    """build_iib_graph.py: shared-user counts >= 2, top k per item, then MMRec's
    get_session_adj: self loop + neighbours, binary, row-degree normalised."""
    U, N = data['user'].num_nodes, data['item'].num_nodes
    R = np.zeros((U, N))
    ei = data[UI].edge_index.numpy()
    R[ei[0], ei[1]] = 1.0
    C = R.T @ R
    np.fill_diagonal(C, 0)
    A = np.eye(N)
    for i in range(N):
        cand = np.flatnonzero(C[i] >= 2)
        top = cand[np.lexsort((cand, -C[i, cand]))[:k]]
        A[i, top] = 1.0
    d = A.sum(1) ** -0.5
    return d[:, None] * A * d[None, :]


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_denoised_graphs_match_numpy(variants, variant):
    data = variants[variant]
    t = DenoisedItemKNN(12)
    out = t(data)
    want = _numpy_denoised([data['item'][m].numpy() for m in data.modalities], 12)
    N = data['item'].num_nodes
    for m, w in zip(data.modalities, want):
        store = out[t.edge_type(m)]
        got = torch.zeros(N, N, dtype=torch.float64)
        got[store.edge_index[1], store.edge_index[0]] = store.edge_weight
        np.testing.assert_allclose(got.numpy(), w, rtol=1e-12, atol=1e-15)
    if len(data.modalities) > 1:  # denoising removes candidates somewhere
        assert (want[0] != 0).sum(1).min() < 12


@pytest.mark.parametrize('k', [2, 5])
def test_behavior_graph_matches_numpy(tiny_data, k):
    model = _build(tiny_data, behavior_k=k)
    np.testing.assert_allclose(model.graphs['behavior'].to_dense().numpy(),
                               _numpy_behavior(tiny_data, k), rtol=1e-12, atol=1e-15)
    store = ItemCooccurrence(k)(tiny_data)['item', f'cooccur{k}_min2', 'item']
    assert store.edge_weight.min() >= 2


def _plain_forward(model, data):
    U = model.num_users
    A = numpy_normalized_adjacency(data)
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h, out = E, E
    for _ in range(model.config.n_ui_layers):
        h = A @ h
        out = out + h
    out = out / (model.config.n_ui_layers + 1)
    graphs = [torch.from_numpy(g) for g in _numpy_denoised(
        [data['item'][m].numpy() for m in model.modalities], model.config.knn_k)]
    graphs.append(torch.from_numpy(_numpy_behavior(data, model.config.behavior_k)))
    views = []
    for G in graphs:
        h = model.item_embedding.weight
        for _ in range(model.config.n_mm_layers):
            h = G @ h
        views.append(h)
    return out[:U], out[U:], views


def _mmrec_loss(model, batch, user, item, views, kl_w, nd_w, K=10, t=0.2):
    """MMRec's calculate_loss, written out (views: the modalities, then session)."""
    users, pos, neg = batch
    eu = user[users]
    unit = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    # get_weight_modal
    p = torch.sigmoid(torch.stack([(eu * unit(h[pos])).sum(1) for h in views]))
    n = torch.sigmoid(torch.stack([(eu * unit(h[neg])).sum(1) for h in views]))
    p_var, p_mean, p_max = torch.var(p, dim=0), p.mean(0), p.max(0).values
    n_mean = n.mean()
    w_pos = torch.clamp(p_mean * torch.exp(-p_var) ** 2, 0, 1).detach()
    mask = (p_mean < n_mean).double()
    w_neg = torch.clamp((p_max - n_mean) * mask, 0, 1).detach()
    all_item = item + sum(views) / len(views)
    ps, ns = (eu * all_item[pos]).sum(1), (eu * all_item[neg]).sum(1)
    bpr = -torch.mean(torch.log(torch.sigmoid(ps - ns)) * w_pos +
                      torch.log(torch.sigmoid(ns - ps)) * w_neg)
    # KL
    u_id = torch.unique(users)
    i_id = torch.unique(torch.cat([pos, neg]))
    mean_view = sum(views) / len(views)
    p_g = torch.sigmoid(user[u_id] @ unit(item[i_id]).t())
    p_t = torch.sigmoid(user[u_id] @ unit(mean_view[i_id]).t())

    def kl(a, b):
        return a * torch.log(a) - a * torch.log(b) + (1 - a) * torch.log(1 - a) - \
            (1 - a) * torch.log(1 - b)
    kl_loss = torch.mean(kl(p_g, p_t) + kl(p_t, p_g))
    # neighbour discrimination
    probs = [F.softmax(unit(h[i_id]) @ unit(h).t(), dim=1) for h in views]
    nd = 0.0
    for v, h in enumerate(views):
        positive = sum(probs) + probs[v]
        mm_pos = torch.topk(positive, K, dim=-1).indices
        single = probs[v].clone()
        single.scatter_(1, mm_pos, 0)
        s_pos = torch.topk(single, K, dim=-1).indices
        a, b = unit(h[i_id]), unit(h)
        tiled = a.unsqueeze(1).expand(-1, K, -1)
        mm_s = torch.exp((tiled * b[mm_pos]).sum(2) / t).sum(1)
        s_s = torch.exp((tiled * b[s_pos]).sum(2) / t).sum(1)
        ttl = torch.exp(a @ b.t() / t).sum(1)
        nd = nd + torch.mean(-torch.log(mm_s / ttl + 10e-10) -
                             torch.log(s_s / (ttl - mm_s) + 10e-10))
    nd = nd / len(views)
    return bpr, nd, kl_loss, bpr + nd_w * nd + kl_w * kl_loss, (w_pos, w_neg)


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_mmrecs_formulas(variants, variant):
    data = variants[variant]
    model = _build(data, n_ui_layers=2, n_mm_layers=2, knn_k=6, behavior_k=3,
                   kl_weight=0.7, neighbor_weight=0.3, num_pseudo_labels=5).train()
    user, item, views = _plain_forward(model, data)
    got_u, got_i = model.embed()
    torch.testing.assert_close(got_u, user, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_i, item + sum(views) / len(views), rtol=1e-10,
                               atol=1e-12)

    batch = random_batch(data, 48, seed=4)
    parts, grads = loss_and_grads(model, batch)
    assert set(parts) == {'total', 'bpr', 'nd', 'kl'}
    user, item, views = _plain_forward(model, data)
    bpr, nd, kl, total, (w_pos, w_neg) = _mmrec_loss(model, batch, user, item, views,
                                                     0.7, 0.3, K=5)
    assert (w_neg > 0).any() or (w_pos < 1).all()
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['nd'], nd)
    torch.testing.assert_close(parts['kl'], kl)
    torch.testing.assert_close(parts['total'], total)
    assert_grads_match(model, total, grads, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_fused_neighbor_discrimination_matches_the_plain_path(dtype):
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(40, 8, generator=g, dtype=dtype).requires_grad_()
             for _ in range(3)]
    rows = torch.tensor([0, 3, 4, 9, 17, 38])
    values, grads = [], []
    for fused in (True, False):
        loss = neighbor_discrimination(views, rows, 5, 0.2, fused=fused)
        values.append(loss.detach())
        grads.append(torch.autograd.grad(loss, views))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else \
        dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(values[0], values[1], **tol)
    for a, b in zip(*grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, **tol)


def test_closed_form_kl_matches_and_stays_finite():
    a = torch.randn(50, dtype=torch.float64) * 3
    b = torch.randn(50, dtype=torch.float64) * 3
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    mmrec = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q)) + \
        q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    torch.testing.assert_close(symmetric_bernoulli_kl(a, b), mmrec)
    big = torch.tensor([40.0, -40.0]), torch.tensor([1.0, 2.0])
    p = torch.sigmoid(big[0])
    assert torch.isnan(p * torch.log(p) + (1 - p) * torch.log(1 - p)).any()  # MMRec
    assert torch.isfinite(symmetric_bernoulli_kl(*big)).all()


def test_config_defaults_grid_and_errors(tiny_data):
    c = DAMRSConfig()
    assert (c.kl_weight, c.neighbor_weight, c.n_mm_layers, c.n_ui_layers, c.knn_k,
            c.behavior_k, c.num_pseudo_labels, c.temperature) == \
        (1.0, 0.001, 1, 2, 10, 2, 10, 0.2)
    assert DAMRSConfig.GRID == {'model.kl_weight': [0.1, 1.0, 10.0],
                                'model.neighbor_weight': [0.01, 0.001, 0.0001]}
    for key, bad in [('knn_k', 0), ('behavior_k', 0), ('kl_weight', -1.0),
                     ('temperature', 0.0), ('n_mm_layers', -1)]:
        with pytest.raises(ConfigError, match=f'model.{key}'):
            DAMRSConfig(**{key: bad})
    with pytest.raises(ConfigError, match='num_pseudo_labels'):
        DAMRS(tiny_data, DAMRSConfig(num_pseudo_labels=61))


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'damrs', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '10')
    assert_beats_popularity(results, tiny_data)
