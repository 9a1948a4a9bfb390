"""MVGAE against a plain dense computation: the product of experts and the KL term
against numpy, the encoders and scores, the loss with each of MMRec's behaviours
switched on or off (eval mode: no noise; training mode: dropout and noise replayed
from the same seed), gradients; and it learns."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     numpy_bipartite_adjacency, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import MVGAE, MVGAEConfig
from mambarec_pyg.models.mvgae import kl_term, product_of_experts


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> MVGAE:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return MVGAE(data, MVGAEConfig(**kwargs))


def _mean_adjacency(data):
    A = numpy_bipartite_adjacency(data)
    A = A + np.eye(len(A))
    return torch.from_numpy(A / A.sum(1, keepdims=True))


def _drop(h, training):
    """Dropout 0.1 drawing the mask as F.dropout does (the same random numbers)."""
    return h * F.dropout(torch.ones_like(h), 0.1, training) if training else h


def _encoder(enc, F_table, A, training):
    x = torch.cat([enc.preference, F_table @ enc.mlp.weight.t() + enc.mlp.bias])
    x = x / x.norm(dim=1, keepdim=True)

    def conv(k, x):
        h = A @ (x @ enc.conv_weights[k]) + enc.conv_biases[k]
        return _drop(h / h.norm(dim=1, keepdim=True), training)

    def lin(layer, x):
        return x @ layer.weight.t() + layer.bias

    L = enc.num_layers
    for k in range(L):
        x = F.leaky_relu(lin(enc.gates[k], F.leaky_relu(conv(k, x))))
    mu = lin(enc.gates[L], F.leaky_relu(conv(L, x))) + \
        F.leaky_relu(lin(enc.linear_mu, x))
    lv = lin(enc.gates[L + 1], F.leaky_relu(conv(L + 1, x))) + \
        F.leaky_relu(lin(enc.linear_logvar, x))
    return mu, lv


def _poe(mus, lvs):
    T = [1.0 / (torch.exp(lv) + 1e-8) for lv in lvs]
    return sum(m * t for m, t in zip(mus, T)) / sum(T), torch.log(1.0 / sum(T))


def _kl(mu, lv):
    lv = lv.clamp(max=10)
    return -0.5 * torch.mean(torch.sum(1 + lv - mu ** 2 - lv.exp(), dim=1))


def _plain(model, data, training=False):
    A = _mean_adjacency(data)
    modal = [_encoder(model.encoders[m], data['item'][m].double(), A, training)
             for m in model.modalities]
    collab = _encoder(model.collaborative_encoder, model.collaborative, A, training)
    mu, lv = _poe(*zip(*modal))
    mu, lv = _poe([mu, collab[0]], [lv, collab[1]])
    return mu, lv, modal, collab


def _sample(mu, lv, training):
    if not training:
        return mu
    return mu + torch.randn_like(mu) * 0.1 * torch.exp(lv.clamp(max=10) * 0.5)


def _recon(model, z, batch):
    c = model.config
    u, i, j = batch
    off = 0 if c.mmrec_item_index else model.num_users
    if c.sigmoid_embeddings:
        z = torch.sigmoid(z)
    pos = torch.sigmoid((z[u] * z[i + off]).sum(1))
    if c.mmrec_batch_negatives:  # every user against all the batch's negatives
        neg = torch.sigmoid((z[u][:, None, :] * z[j + off][None]).sum(-1).max(1).values)
    else:
        neg = torch.sigmoid((z[u] * z[j + off]).sum(1))
    return -torch.sum(torch.log2(torch.sigmoid(pos - neg)))


def _plain_loss(model, data, batch, training=False):
    mu, lv, modal, collab = _plain(model, data, training)
    beta = model.config.beta
    recon = _recon(model, _sample(mu, lv, training), batch)
    kl = _kl(mu, lv)
    experts = 0
    for e_mu, e_lv in [*modal, collab]:
        experts = experts + _recon(model, _sample(e_mu, e_lv, training), batch) + \
            beta * _kl(e_mu, e_lv)
    return recon, kl, experts


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.n_layers'):
        MVGAEConfig(n_layers=0)
    with pytest.raises(ConfigError, match='model.sigmoid_embeddings'):
        MVGAEConfig(sigmoid_embeddings=1)
    assert MVGAEConfig.GRID == {'train.lr': [1e-4, 1e-3, 1e-2, 1e-1],
                                'model.beta': [0.01, 0.1, 1.0]}


def test_product_of_experts_and_kl_match_numpy():
    g = torch.Generator().manual_seed(0)
    mus = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    lvs = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3)]
    mu, lv = product_of_experts(mus, lvs)
    prec = sum(1.0 / (np.exp(v.numpy()) + 1e-8) for v in lvs)
    want_mu = sum(m.numpy() / (np.exp(v.numpy()) + 1e-8) for m, v in zip(mus, lvs))
    np.testing.assert_allclose(mu.numpy(), want_mu / prec, rtol=1e-12)
    np.testing.assert_allclose(lv.numpy(), np.log(1.0 / prec), rtol=1e-12)
    lv_big = lvs[0] * 8  # some above the clamp at 10
    assert bool((lv_big > 10).any())
    m, v = mus[0].numpy(), np.minimum(lv_big.numpy(), 10)
    want = -0.5 * np.mean(np.sum(1 + v - m ** 2 - np.exp(v), axis=1))
    np.testing.assert_allclose(kl_term(mus[0], lv_big).item(), want, rtol=1e-12)


@pytest.mark.parametrize('variant, n_layers', [('image+text', 1), ('text', 2),
                                               ('image+text+audio', 1)])
def test_forward_matches_a_plain_computation(variants, variant, n_layers):
    data = variants[variant]
    for sig in (False, True):
        model = _build(data, n_layers=n_layers, sigmoid_embeddings=sig).eval()
        mu = _plain(model, data)[0]
        z = torch.sigmoid(mu) if sig else mu
        user, item = model.embed()
        torch.testing.assert_close(user, z[:model.num_users], rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(item, z[model.num_users:], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize('item_index, batch_negatives, sig',
                         list(itertools.product([False, True], repeat=3)))
def test_loss_and_gradients_match_a_plain_computation(tiny_data, item_index,
                                                      batch_negatives, sig):
    model = _build(tiny_data, beta=0.3, mmrec_item_index=item_index,
                   mmrec_batch_negatives=batch_negatives, sigmoid_embeddings=sig)
    model.eval()  # deterministic: no dropout, z = mu (training mode: next test)
    batch = random_batch(tiny_data, 24, seed=2)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'recon', 'kl', 'experts'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    recon, kl, experts = _plain_loss(model, tiny_data, batch)
    torch.testing.assert_close(parts['recon'], recon)
    torch.testing.assert_close(parts['kl'], kl)
    torch.testing.assert_close(parts['experts'], experts)
    (recon + 0.3 * kl + experts).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-7, atol=1e-10,
                                   msg=name)


def test_training_mode_draws_dropout_and_noise(tiny_data):
    model = _build(tiny_data, beta=0.2).train()
    batch = random_batch(tiny_data, 24, seed=3)
    torch.manual_seed(7)
    parts = model.loss(batch)
    torch.manual_seed(7)
    recon, kl, experts = _plain_loss(model, tiny_data, batch, training=True)
    torch.testing.assert_close(parts['recon'], recon)
    torch.testing.assert_close(parts['kl'], kl)
    torch.testing.assert_close(parts['experts'], experts)
    model.eval()
    assert not torch.allclose(model.loss(batch)['total'], parts['total'])


def test_mmrec_sigmoid_branch_has_no_reconstruction_gradient(tiny_data):
    """The documented defect: with the sigmoid branch the decoder saturates at d = 64
    (sigma(sigma(z_u)^T sigma(z_i)) == 1 in float32), so the reconstruction terms
    give no gradient at all."""
    torch.manual_seed(0)
    model = MVGAE(tiny_data, MVGAEConfig(sigmoid_embeddings=True)).eval()
    batch = random_batch(tiny_data, 64, seed=1)
    parts = model.loss(batch)
    assert parts['recon'].item() == pytest.approx(64.0)  # log2(2) per triple
    parts['recon'].backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_fixed_id_tables_are_buffers(tiny_data):
    model = _build(tiny_data, train_id_embeddings=False)
    names = dict(model.named_parameters())
    assert 'collaborative' not in names
    assert not any(n.endswith('preference') for n in names)
    assert 'collaborative' in model.state_dict()


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'mvgae', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '4')
    assert_beats_popularity(results, tiny_data)
