"""LGMRec against a plain dense computation written from BASELINES.md §3.9 (forward
in eval and training mode with fixed noise, every loss part and the gradients), the
HCL term against a naive loop, deterministic inference (and MMRec's noisy one), and
it learns."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli, with_item_features)

import mambarec_pyg.nn.hypergraph as hypergraph_module
from mambarec_pyg.config import Config, ConfigError, DataConfig
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models import LGMRec, LGMRecConfig
from mambarec_pyg.models.lgmrec import DATASET_DEFAULTS, hcl_loss, row_logsumexp_sum
from mambarec_pyg.nn.functional import frozen_product, normalize_rows

UI = ('user', 'interacts', 'item')


# -- helpers -----------------------------------------------------------------------
def _with_modalities(base, num_modalities: int) -> HeteroData:
    """``base`` with its first ``num_modalities`` of image, text and a random audio."""
    g = torch.Generator().manual_seed(5)
    feats = {m: base['item'][m] for m in base.modalities}
    feats['audio'] = torch.randn(base['item'].num_nodes, 12, generator=g)
    names = ['image', 'text', 'audio'][:num_modalities]
    return with_item_features(base, {m: feats[m].clone() for m in names},
                              name='test', splits=True)


def _build(data, **options) -> LGMRec:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return LGMRec(data, LGMRecConfig(**options))


def _batch(data) -> BPRBatch:
    return random_batch(data, 32, seed=1)


class _FixedDraws:
    """Stands in for the model's random draws: seeded, recorded in call order."""

    def __init__(self, keep_rate: float, seed: int = 3):
        self.g = torch.Generator().manual_seed(seed)
        self.keep_rate = keep_rate
        self.draws = []

    def gumbel(self, logits):
        u = torch.rand(logits.shape, generator=self.g, dtype=logits.dtype)
        x = -torch.log(-torch.log(u))
        self.draws.append(('gumbel', x))
        return x

    def mask(self, h):
        keep = (torch.rand(h.shape, generator=self.g, dtype=h.dtype) < self.keep_rate)
        x = keep.to(h.dtype) / self.keep_rate
        self.draws.append(('mask', x))
        return x


def _plain(model: LGMRec, data, draws=None, training=False):
    """LGMRec from the equations with dense float64 matrices: returns
    ``(E [U + N, d], hyper_user {m: [U, d]}, hyper_item {m: [N, d]})``.

    ``draws``: the recorded noise, consumed per modality as (Gumbel, mask) for the
    items, then for the users; ``training`` applies the masks."""
    c = model.config
    U, N = data['user'].num_nodes, data['item'].num_nodes
    ei = data[UI].edge_index
    R = torch.zeros(U, N, dtype=torch.float64)
    R[ei[0], ei[1]] = 1.0
    A = torch.zeros(U + N, U + N, dtype=torch.float64)
    A[:U, U:] = R
    A[U:, :U] = R.t()
    inv = (A.sum(1) + 1e-7) ** -0.5
    A_hat = inv[:, None] * A * inv[None, :]

    E0 = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers = [E0]
    for _ in range(c.n_ui_layers):
        layers.append(A_hat @ layers[-1])
    Ec = torch.stack(layers).mean(0)

    def norm(x):
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    local = Ec
    for m in data.modalities:
        X = data['item'][m].double()
        I_m = X @ model.projections[m]
        U_m = (R @ I_m) / (R.sum(1, keepdim=True) + 1e-7)
        E_m = torch.cat([U_m, I_m])
        for _ in range(c.n_mm_layers):
            E_m = A_hat @ E_m
        local = local + norm(E_m)

    queue = list(draws or [])

    def assign(Z):
        if queue:
            kind, g = queue.pop(0)
            assert kind == 'gumbel'
            Z = Z + g
        H = torch.softmax(Z / c.tau, dim=1)
        if training:
            kind, mask = queue.pop(0)
            assert kind == 'mask'
            H = H * mask
        return H

    hyper_user, hyper_item = {}, {}
    for m in data.modalities:
        X = data['item'][m].double()
        Z_i = X @ model.hyperedges[m]
        Z_u = R @ Z_i
        H_i, H_u = assign(Z_i), assign(Z_u)
        E_i = Ec[U:]
        for _ in range(c.n_hyper_layer):
            Lam = H_i.t() @ E_i
            E_i = H_i @ Lam
            E_u = H_u @ Lam
        hyper_user[m], hyper_item[m] = E_u, E_i
    Eg = sum(torch.cat([hyper_user[m], hyper_item[m]]) for m in data.modalities)
    assert not queue
    return local + c.alpha * norm(Eg), hyper_user, hyper_item


def _naive_triple(anchor_table, candidates, index, tau):
    """-sum_b log(exp(cos(a_b, c_b) / tau) / sum_n exp(cos(a_b, c_n) / tau)), a loop;
    cosines as MMRec's F.normalize gives them (0 for an all-zero row, e.g. a
    hyperedge assignment dropped out entirely)."""
    total = 0.0
    for k in index.tolist():
        a = anchor_table[k]
        cos = (candidates @ a) / (candidates.norm(dim=1).clamp_min(1e-12) *
                                  a.norm().clamp_min(1e-12))
        total = total - torch.log(torch.exp(cos[k] / tau) / torch.exp(cos / tau).sum())
    return total


def _plain_loss(model, data, batch, E, hyper_user, hyper_item):
    U = data['user'].num_nodes
    c = model.config
    u, i, j = batch.users, batch.pos, batch.neg
    eu, ei, ej = E[u], E[U + i], E[U + j]
    x = (eu * ei).sum(1) - (eu * ej).sum(1)
    parts = {'bpr': -torch.log(torch.sigmoid(x)).mean(),
             'reg': c.reg_weight * (eu.norm() + ei.norm() + ej.norm()) / len(u)}
    mods = list(data.modalities)
    if len(mods) > 1:
        hcl = 0.0
        for p, a in enumerate(mods):
            for b in mods[p + 1:]:
                hcl = hcl + _naive_triple(hyper_user[a], hyper_user[b], u, c.tau)
                hcl = hcl + _naive_triple(hyper_item[a], hyper_item[b], i, c.tau)
        parts['hcl'] = c.cl_weight * hcl
    parts['total'] = sum(parts.values())
    return parts


# -- forward -----------------------------------------------------------------------
@pytest.mark.parametrize('options', [
    {},
    {'n_ui_layers': 0, 'n_mm_layers': 1, 'n_hyper_layer': 2, 'hyper_num': 3},
    {'n_ui_layers': 3, 'n_mm_layers': 0, 'n_hyper_layer': 3, 'hyper_num': 80,
     'alpha': 0.7, 'tau': 0.5},
])
def test_eval_embeddings_match_a_dense_computation(tiny_data, options):
    model = _build(tiny_data, **options)
    user, item = model.eval_embeddings()
    with torch.no_grad():
        E, _, _ = _plain(model, tiny_data)
    U = tiny_data['user'].num_nodes
    # (MMRec's 1e-7 degree epsilon differs from UserItemNorm's by ~1e-8 relative)
    torch.testing.assert_close(user, E[:U], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(item, E[U:], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('num_modalities', [1, 2, 3])
def test_training_loss_parts_and_gradients_match_with_fixed_noise(
        tiny_data, num_modalities, monkeypatch):
    data = _with_modalities(tiny_data, num_modalities)
    model = _build(data, n_hyper_layer=2, keep_rate=0.6, cl_weight=0.05,
                   reg_weight=0.01).train()
    fixed = _FixedDraws(keep_rate=0.6)
    monkeypatch.setattr(model, 'gumbel_noise', fixed.gumbel)
    monkeypatch.setattr(model, 'dropout_mask', fixed.mask)
    batch = _batch(data)
    parts = model.loss(batch)
    assert len(fixed.draws) == 4 * num_modalities  # Gumbel + mask, items and users

    E, hyper_user, hyper_item = _plain(model, data, fixed.draws, training=True)
    expected = _plain_loss(model, data, batch, E, hyper_user, hyper_item)
    assert set(parts) == set(expected)
    assert ('hcl' in parts) == (num_modalities > 1)
    for key in expected:
        torch.testing.assert_close(parts[key], expected[key], rtol=1e-6, atol=1e-12,
                                   msg=key)

    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(parts['total'], params)
    want = torch.autograd.grad(expected['total'], params)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)


def test_the_hcl_term_of_two_modalities_is_mmrecs_single_term(tiny_data,
                                                              monkeypatch):
    model = _build(tiny_data, cl_weight=1.0).train()
    fixed = _FixedDraws(keep_rate=model.config.keep_rate)
    monkeypatch.setattr(model, 'gumbel_noise', fixed.gumbel)
    monkeypatch.setattr(model, 'dropout_mask', fixed.mask)
    batch = _batch(tiny_data)
    out = model.encode()
    # image is the anchor; text gives the positive and every candidate
    assert tiny_data.modalities == ('image', 'text')
    hu, hi = out.hyper_user, out.hyper_item
    expected = (_naive_triple(hu['image'], hu['text'], batch.users, 0.2) +
                _naive_triple(hi['image'], hi['text'], batch.pos, 0.2))
    torch.testing.assert_close(model.hcl(out, batch.users, batch.pos), expected)


# -- the HCL term ------------------------------------------------------------------
@pytest.mark.parametrize('tau', [0.2, 0.01])  # 0.01: shifted by the row maximum
@pytest.mark.parametrize('rank', [None, 3])   # 3: the factored K-dimensional logits
def test_hcl_loss_matches_a_naive_loop_and_the_plain_path(tau, rank, monkeypatch):
    monkeypatch.setattr(hypergraph_module, 'BLOCK_ELEMENTS', 100)  # several blocks
    g = torch.Generator().manual_seed(0)
    M, d = 40, 8
    anchors = torch.randn(M, d, dtype=torch.float64, generator=g).requires_grad_()
    index = torch.randint(0, M, (25, ), generator=g)
    index[:5] = index[5]  # repeats count each time
    if rank is None:
        candidates = torch.randn(M, d, dtype=torch.float64, generator=g)
        candidates.requires_grad_()
        leaves, factors = [anchors, candidates], None
    else:
        h = torch.rand(M, rank, dtype=torch.float64, generator=g).requires_grad_()
        lam = torch.randn(rank, d, dtype=torch.float64, generator=g).requires_grad_()
        leaves = [anchors, h, lam]

    def value(fused):
        if rank is None:
            return hcl_loss(anchors, candidates, index, tau, fused=fused)
        return hcl_loss(anchors, h @ lam, index, tau, (h, lam), fused=fused)

    fused, plain = value(True), value(False)
    cands = candidates if rank is None else h @ lam
    naive = _naive_triple(anchors, cands, index, tau)
    torch.testing.assert_close(fused, naive, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain, naive, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(fused, leaves),
                    torch.autograd.grad(plain, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_row_logsumexp_sum_weights_and_stability():
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(6, 4, dtype=torch.float64, generator=g) * 50).requires_grad_()
    c = torch.randn(9, 4, dtype=torch.float64, generator=g).requires_grad_()
    w = torch.tensor([1., 2., 0., 3., 1., 1.], dtype=torch.float64)
    want = (w * torch.logsumexp(a @ c.t(), dim=1)).sum()
    for fused in (True, False):
        got = row_logsumexp_sum(a, c, w, fused=fused)
        assert torch.isfinite(got)
        torch.testing.assert_close(got, want)
        for x, y in zip(torch.autograd.grad(got, [a, c]),
                        torch.autograd.grad(want, [a, c], retain_graph=True)):
            torch.testing.assert_close(x, y)


def test_normalize_rows_and_frozen_product_match_their_plain_paths():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 3, 5, dtype=torch.float64, generator=g)
    x[2, 1] = 0.0            # an all-zero row (clamped norm)
    x[4, 0] = 1e-14          # a row below eps
    x.requires_grad_()
    grad = torch.randn(7, 3, 5, dtype=torch.float64, generator=g)
    fused, plain = normalize_rows(x), normalize_rows(x, fused=False)
    torch.testing.assert_close(fused, plain, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(plain, torch.nn.functional.normalize(x, dim=2))
    gf, = torch.autograd.grad(fused, x, grad)
    gp, = torch.autograd.grad(plain, x, grad)
    torch.testing.assert_close(gf, gp, rtol=1e-12, atol=0.0)

    table = torch.randn(30, 6, dtype=torch.float64, generator=g)
    w = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    out = torch.randn(30, 4, dtype=torch.float64, generator=g)
    fused, plain = frozen_product(table, w), frozen_product(table, w, fused=False)
    torch.testing.assert_close(fused, table @ w)
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(torch.autograd.grad(fused, w, out)[0],
                               torch.autograd.grad(plain, w, out)[0])


# -- inference ---------------------------------------------------------------------
def test_inference_is_deterministic_and_training_is_not(tiny_data):
    model = _build(tiny_data)
    state = torch.get_rng_state()
    first = model.eval_embeddings()
    second = model.eval_embeddings()
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        one, two = model.embed(), model.embed()
    assert not torch.equal(one[0], two[0])
    # seeded training draws repeat
    with torch.no_grad():
        torch.manual_seed(7)
        a = model.embed()
        torch.manual_seed(7)
        b = model.embed()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_noisy_inference_reproduces_mmrec(tiny_data, monkeypatch):
    deterministic = _build(tiny_data)
    noisy = _build(tiny_data, noisy_inference=True)
    noisy.load_state_dict(deterministic.state_dict())
    # random scores from call to call, and the global generator advances
    state = torch.get_rng_state()
    first, second = noisy.eval_embeddings(), noisy.eval_embeddings()
    assert not torch.equal(torch.get_rng_state(), state)
    assert not torch.allclose(first[0], second[0])
    base = deterministic.eval_embeddings()
    assert not torch.allclose(first[0], base[0])
    # with fixed noise: softmax((Z + G) / tau), no dropout in eval mode
    fixed = _FixedDraws(keep_rate=noisy.config.keep_rate)
    monkeypatch.setattr(noisy, 'gumbel_noise', fixed.gumbel)
    user, item = noisy.eval_embeddings()
    assert [kind for kind, _ in fixed.draws] == ['gumbel'] * 4
    with torch.no_grad():
        E, _, _ = _plain(noisy, tiny_data, fixed.draws, training=False)
    U = tiny_data['user'].num_nodes
    torch.testing.assert_close(user, E[:U], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(item, E[U:], rtol=1e-6, atol=1e-9)
    # the switch changes the ranking, not only the values
    top_base = deterministic.recommend(torch.arange(U), k=10)
    top_noisy = noisy.recommend(torch.arange(U), k=10)
    assert not torch.equal(top_base, top_noisy)


# -- config ------------------------------------------------------------------------
def test_config_defaults_dataset_blocks_and_errors():
    c = LGMRecConfig()
    assert (c.n_hyper_layer, c.hyper_num, c.keep_rate, c.alpha) == (1, 4, 0.5, 0.3)
    assert (c.n_ui_layers, c.n_mm_layers, c.cl_weight, c.reg_weight) == \
        (2, 2, 1e-4, 1e-6)
    assert not c.noisy_inference and LGMRec.stochastic_training
    assert DATASET_DEFAULTS['baby'] == {
        f'model.{k}': getattr(c, k)
        for k in ('n_hyper_layer', 'hyper_num', 'keep_rate', 'alpha')}
    base = Config(data=DataConfig(synthetic='tiny'), model=c)
    clothing = base.with_overrides(DATASET_DEFAULTS['clothing']).model
    assert (clothing.n_hyper_layer, clothing.hyper_num, clothing.keep_rate,
            clothing.alpha) == (2, 64, 0.2, 0.2)
    sports = base.with_overrides(DATASET_DEFAULTS['sports']).model
    assert (sports.keep_rate, sports.alpha) == (0.4, 0.6)
    for key, bad in [('keep_rate', 0.0), ('keep_rate', 1.5), ('n_hyper_layer', 0),
                     ('hyper_num', 0), ('tau', 0.0), ('alpha', -1.0),
                     ('n_mm_layers', -1)]:
        with pytest.raises(ConfigError, match=f'model.{key}'):
            LGMRecConfig(**{key: bad})


def test_keep_rate_one_draws_no_mask(tiny_data, monkeypatch):
    model = _build(tiny_data, keep_rate=1.0).train()
    fixed = _FixedDraws(keep_rate=1.0)
    monkeypatch.setattr(model, 'gumbel_noise', fixed.gumbel)
    monkeypatch.setattr(model, 'dropout_mask', fixed.mask)
    model.embed()
    assert [kind for kind, _ in fixed.draws] == ['gumbel'] * 4


# -- learning ----------------------------------------------------------------------
def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'lgmrec', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '8')
    assert_beats_popularity(results, tiny_data)
