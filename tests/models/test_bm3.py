"""BM3 against a plain re-computation (dense adjacency powers, whole-table
projections and predictor as MMRec orders them), its dropout target views with a
fixed generator, and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     numpy_bipartite_adjacency, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models import BM3, BM3Config


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> BM3:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return BM3(data, BM3Config(**kwargs))


def _numpy_adjacency(data):
    A = numpy_bipartite_adjacency(data)
    deg = A.sum(1)
    inv = np.where(deg > 0, deg, 1.0) ** -0.5
    return torch.from_numpy(inv[:, None] * A * inv[None, :])


def _batch(data) -> BPRBatch:
    return random_batch(data, 48, seed=1)


class _Plain:
    """BM3 as MMRec writes it, with dense matrices and whole tables."""

    def __init__(self, model, data, layers):
        self.model, self.layers = model, layers
        self.A = _numpy_adjacency(data)

    def encode(self):
        m = self.model
        E0 = torch.cat([m.user_embedding.weight, m.item_embedding.weight])
        out, E = [E0], E0
        for _ in range(self.layers):
            E = self.A @ E
            out.append(E)
        E = torch.stack(out).mean(0)
        U = m.num_users
        return E[:U], E[U:] + m.item_embedding.weight

    def predictor(self, x):
        return x @ self.model.predictor.weight.t() + self.model.predictor.bias

    def project(self, name):
        lin = self.model.projections[name]
        return self.model.features[name] @ lin.weight.t() + lin.bias

    def loss(self, users, items, masks, reg_weight, cl_weight):
        """``masks``: the scaled keep masks of U, I and each modality (or None)."""
        U, I = self.encode()
        T = {m: self.project(m) for m in self.model.modalities}

        def drop(z, mask):
            z = z.detach()
            return z if mask is None else z * mask

        U_t, I_t = drop(U, masks[0]), drop(I, masks[1])
        T_t = {m: drop(T[m], mk) for m, mk in zip(self.model.modalities, masks[2:])}
        pU, pI = self.predictor(U), self.predictor(I)

        def c(a, b):
            return 1 - F.cosine_similarity(a, b, dim=-1).mean()

        align = c(pU[users], I_t[items]) + c(pI[items], U_t[users])
        reg = reg_weight * (U.norm() + I.norm()) / I.shape[0]  # whole tables / N
        cl = 0.0
        for m in self.model.modalities:
            pT = self.predictor(T[m])[items]
            cl = cl + c(pT, I_t[items]) + c(pT, T_t[m][items])
        return {'align': align, 'reg': reg, 'cl': cl,
                'total': align + reg + cl_weight * cl}


def test_config_defaults_and_grid():
    c = BM3Config()
    assert (c.n_layers, c.dropout, c.reg_weight, c.cl_weight) == (1, 0.5, 0.1, 2.0)
    assert BM3Config.GRID == {'model.n_layers': [1, 2], 'model.dropout': [0.3, 0.5],
                              'model.reg_weight': [0.1, 0.01]}
    with pytest.raises(ConfigError, match='model.dropout'):
        BM3Config(dropout=1.0)


@pytest.mark.parametrize('variant, layers', [('image+text', 1), ('text', 2),
                                             ('image+text+audio', 2)])
def test_embeddings_match_a_plain_computation(variants, variant, layers):
    data = variants[variant]
    model = _build(data, n_layers=layers)
    plain = _Plain(model, data, layers)
    U, I = plain.encode()
    for got, want in zip(model.encode(), (U, I)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(model.eval_embeddings(),
                         (plain.predictor(U), plain.predictor(I))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('variant', ['image+text', 'image+text+audio'])
def test_loss_and_gradients_without_dropout(variants, variant):
    data = variants[variant]
    model = _build(data, n_layers=2, dropout=0.0, reg_weight=0.3, cl_weight=1.5)
    model.train()
    batch = _batch(data)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'align', 'reg', 'cl'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    plain = _Plain(model, data, 2)
    masks = [None] * (2 + len(model.modalities))
    want = plain.loss(batch[0], batch[1], masks, 0.3, 1.5)
    for key in want:
        torch.testing.assert_close(parts[key], want[key], msg=key)
    want['total'].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-12,
                                   msg=name)


def test_dropout_target_views_with_a_fixed_generator(tiny_data):
    model = _build(tiny_data, dropout=0.5).train()
    model.generator = torch.Generator().manual_seed(11)
    batch = _batch(tiny_data)
    parts = model.loss(batch)
    # the same draws, in the documented order: U, I, then each modality, each over
    # the whole table, keep where rand >= q, scaled by 1 / (1 - q)
    g = torch.Generator().manual_seed(11)
    d = model.config.embedding_size
    shapes = [(model.num_users, d)] + [(model.num_items, d)] * (1 + 2)
    masks = [(torch.rand(s, generator=g, dtype=torch.float64) >= 0.5).double() / 0.5
             for s in shapes]
    want = _Plain(model, tiny_data, 1).loss(batch[0], batch[1], masks, 0.1, 2.0)
    for key in want:
        torch.testing.assert_close(parts[key], want[key], msg=key)
    # different masks give a different loss; no masks (q = 0) another one
    model.generator = torch.Generator().manual_seed(12)
    assert not torch.allclose(model.loss(batch)['align'], parts['align'])
    no_drop = _Plain(model, tiny_data, 1).loss(batch[0], batch[1], [None] * 4, 0.1,
                                               2.0)
    assert not torch.allclose(no_drop['align'], parts['align'])


def test_dropout_mask_statistics(tiny_data):
    model = _build(tiny_data, dropout=0.3)
    model.generator = torch.Generator().manual_seed(0)
    x = torch.ones(400, 64, dtype=torch.float64)
    mask = model.dropout_mask(x.shape, x)
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert (mask == 0).double().mean().item() == pytest.approx(0.3, abs=0.01)
    assert _build(tiny_data, dropout=0.0).dropout_mask(x.shape, x) is None


def test_negatives_are_ignored(tiny_data):
    model = _build(tiny_data).train()
    users, pos, neg = _batch(tiny_data)
    torch.manual_seed(5)
    a = model.loss(BPRBatch(users, pos, neg, 48))
    torch.manual_seed(5)
    b = model.loss(BPRBatch(users, pos, neg.flip(0), 48))
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'bm3', '--train.batch-size', '64',
                                '--train.lr', '0.01', '--train.max-epochs', '12')
    assert_beats_popularity(results, tiny_data)
