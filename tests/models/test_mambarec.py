"""MambaRec on small data: formulas against numpy, fast paths against plain paths,
switches, learning, robustness, and the released-weights interface."""
from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from support import default_dtype, random_batch, with_item_features

from mambarec_pyg.config import ConfigError, MambaRecConfig
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models.mambarec import LossParts, MambaRec
from mambarec_pyg.train.trainer import make_optimizer
from mambarec_pyg.nn.losses import mmd_loss

UI = ('user', 'interacts', 'item')


def _dataset(base, features: dict) -> HeteroData:
    """A copy of ``base``'s users, items and edges with the given item features."""
    return with_item_features(base, features, name='test', splits=True)


@pytest.fixture(scope='module')
def data(tiny_data):
    return _dataset(tiny_data, {m: tiny_data['item'][m].clone()
                                for m in tiny_data.modalities})


@pytest.fixture(scope='module')
def data3(tiny_data):
    g = torch.Generator().manual_seed(0)
    feats = {m: tiny_data['item'][m].clone() for m in tiny_data.modalities}
    feats['audio'] = torch.randn(tiny_data['item'].num_nodes, 20, generator=g)
    return _dataset(tiny_data, feats)


@pytest.fixture(scope='module')
def data1(tiny_data):
    return _dataset(tiny_data, {'text': tiny_data['item']['text'].clone()})


def _batch(data):
    """48 triples ``(users, pos, neg)``; :func:`_loss` sets the nominal size."""
    return tuple(random_batch(data, 48))


def _loss(model, users, pos, neg, size=None):
    return model.loss(BPRBatch(users, pos, neg, size))


def _model(data, seed=0, dtype=torch.float64, **kw) -> MambaRec:
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return MambaRec(data, MambaRecConfig(**kw))


# ---------------------------------------------------------------------------------
# Formulas against plain numpy
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('which', ['data1', 'data', 'data3'])
def test_fusion_matches_numpy(which, request):
    dataset = request.getfixturevalue(which)
    model = _model(dataset)
    M = len(model.modalities)
    rng = np.random.default_rng(0)
    content = rng.normal(size=(11, 64))
    views = [rng.normal(size=(11, 64)) for _ in range(M)]
    with torch.no_grad():
        side = model.fuse(torch.tensor(content), [torch.tensor(z) for z in views])
    if M == 1:
        expected = views[0]
    else:
        def lin(layer, x):
            w = layer.weight.detach().numpy()
            b = 0 if layer.bias is None else layer.bias.detach().numpy()
            return x @ w.T + b

        def sigmoid(x):
            return 1 / (1 + np.exp(-x))

        q = np.stack([lin(model.fusion.query[2], np.tanh(lin(model.fusion.query[0], z)))[:, 0]
                      for z in views], axis=1)                         # [R, M]
        a = np.exp(q - q.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        common = sum(a[:, [m]] * views[m] for m in range(M))
        seps = [sigmoid(lin(model.fusion.preference_gates[name], content)) * (views[m] - common)
                for m, name in enumerate(model.modalities)]
        expected = (sum(seps) + common) / (M + 1)
    np.testing.assert_allclose(side.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_loss_parts_match_plain_computation(data):
    model = _model(data, dropout=0.0, cl_weight=0.3, mmd_weight=0.4,
                   mmd_bandwidth=(1.0, 2.0)).train()
    users, pos, neg = _batch(data)
    snapshot = copy.deepcopy(model)
    parts = _loss(model, users, pos, neg, 64)
    out = snapshot.encode()  # the same train-mode forward
    U = model.num_users
    e_u, e_i, e_j = out.user[users], out.item[pos], out.item[neg]
    bpr = -F.logsigmoid((e_u * e_i).sum(1) - (e_u * e_j).sum(1)).mean()
    reg = 1e-4 * (e_u.pow(2).sum() + e_i.pow(2).sum() + e_j.pow(2).sum()) / 2 / 64

    def nce(a, b, t=0.2):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = a @ b.t() / t
        return -(logits.diag() - logits.logsumexp(1)).mean()

    cl = nce(out.side[U + pos], out.content[U + pos]) + nce(out.side[users],
                                                            out.content[users])
    gv, gt = (F.normalize(out.alignment[m][pos], dim=1) for m in model.modalities)

    def kern(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * s * s)) for s in (1.0, 2.0))

    mmd = kern(gv, gv).mean() + kern(gt, gt).mean() - 2 * kern(gv, gt).mean()
    expected = dict(zip(LossParts, (bpr + reg + 0.3 * cl + 0.4 * mmd, bpr, reg, cl,
                                    mmd)))
    assert list(parts) == list(LossParts)
    for name in LossParts:
        torch.testing.assert_close(parts[name], expected[name], rtol=1e-10, atol=1e-12,
                                   msg=name)


def test_three_modalities_mmd_is_mean_over_pairs(data3):
    model = _model(data3, dropout=0.0).train()
    users, pos, neg = _batch(data3)
    snapshot = copy.deepcopy(model)
    parts = _loss(model, users, pos, neg)
    g = snapshot.encode().alignment
    pairs = list(itertools.combinations(model.modalities, 2))
    expected = sum(mmd_loss(F.normalize(g[a][pos], dim=1), F.normalize(g[b][pos], dim=1),
                            1.5) for a, b in pairs) / len(pairs)
    torch.testing.assert_close(parts['mmd'], expected)


# ---------------------------------------------------------------------------------
# Fast paths against plain paths
# ---------------------------------------------------------------------------------
def _loss_and_grads(model, batch):
    parts = _loss(model, *batch)
    model.zero_grad()
    parts['total'].backward()
    return parts, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('option', [dict(propagation='pyg'), dict(fusion_rows='all'),
                                    dict(compose_projection=False)])
@pytest.mark.parametrize('variant', ['reference', 'paper'])
def test_fast_paths_match_plain_paths(data, option, variant):
    batch = _batch(data)
    fast = _model(data, dropout=0.0, variant=variant).train()
    plain = _model(data, dropout=0.0, variant=variant, **option).train()
    plain.load_state_dict(fast.state_dict())
    parts_fast, grads_fast = _loss_and_grads(fast, batch)
    parts_plain, grads_plain = _loss_and_grads(plain, batch)
    assert parts_fast.keys() == parts_plain.keys()
    for key in parts_fast:
        torch.testing.assert_close(parts_fast[key], parts_plain[key], rtol=1e-10,
                                   atol=1e-13)
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_plain[name], rtol=1e-8,
                                   atol=1e-13, msg=name)
    for a, b in zip(fast.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b)  # BatchNorm statistics too


# ---------------------------------------------------------------------------------
# BatchNorm statistics: the released second DREAM pass
# ---------------------------------------------------------------------------------
def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if 'running' in k or 'num_batches' in k}


@pytest.mark.parametrize('global_alignment', [True, False])
def test_batchnorm_statistics_as_with_released_second_pass(data, global_alignment):
    model = _model(data, dropout=0.0, global_alignment=global_alignment).train()
    released = copy.deepcopy(model)
    _loss(model, *_batch(data))
    # The released loss: one forward pass, then (for the MMD term) every DREAM again.
    released.encode()
    if global_alignment:
        with torch.no_grad():
            for m in released.modalities:
                released.dreams[m](released.projections[m](released.features[m]))
    ours, theirs = _bn_state(model), _bn_state(released)
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-12, atol=1e-15,
                                   msg=key)
    # The momentum is back to its configured value afterwards.
    assert all(mod.momentum == 0.1 for mod in model.modules()
               if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm))


def test_forward_updates_batchnorm_once(data):
    model = _model(data).train()
    before = model.dreams['image'].branch1[1].num_batches_tracked.item()
    model()
    assert model.dreams['image'].branch1[1].num_batches_tracked.item() == before + 1


# ---------------------------------------------------------------------------------
# Gradients, switches, variants
# ---------------------------------------------------------------------------------
def test_gradients_reach_every_parameter(data):
    model = _model(data).train()
    _loss(model, *_batch(data))['total'].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        # Biases in front of a BatchNorm (projection, DREAM branches) have a zero
        # gradient in train mode, and off-centre taps of the dilated 3x3 kernels never
        # meet a 1x1 map's input (the released model's gradients agree).
        in_front_of_bn = (name.startswith('projections.') and name.endswith('bias')) \
            or (name.startswith('dreams.') and '.0.bias' in name) \
            or name.endswith('branch5_conv.bias') or 'conv_cat.0.bias' in name
        if not in_front_of_bn:
            grad = p.grad
            if grad.dim() == 4 and grad.size(-1) == 3:
                grad = grad[..., 1, 1]
            assert grad.abs().max() > 0, name
    assert model.features['image'].grad.abs().sum() > 0


def test_frozen_features_are_buffers(data):
    model = _model(data, trainable_features=False).train()
    names = dict(model.named_parameters())
    assert not any(n.startswith('features.') for n in names)
    assert 'features.image' in dict(model.named_buffers())
    assert not model.features['image'].requires_grad
    _loss(model, *_batch(data))['total'].backward()
    assert model.features['image'].grad is None
    assert names['projections.image.reduce.weight'].grad is not None
    # Same function as the trainable tables.
    other = _model(data, trainable_features=True).eval()
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other()[0], model.eval()()[0])


def test_switches(data):
    batch = _batch(data)
    model = _model(data, local_alignment=False)
    assert model.dreams is None
    parts = _loss(model.train(), *batch)
    assert parts['mmd'] > 0 and parts['cl'] > 0
    model = _model(data, global_alignment=False).train()
    parts = _loss(model, *batch)
    assert parts['cl'] == 0 and parts['mmd'] == 0
    torch.testing.assert_close(parts['total'], parts['bpr'] + parts['reg'])
    # the InfoNCE warm-up: weight 0 during the first epochs, then the configured one
    model = _model(data, dropout=0.0, cl_warmup_epochs=2).train()
    assert model.on_epoch_start(0) == {'cl_weight': 0.0}
    parts = _loss(model, *batch)
    torch.testing.assert_close(parts['total'], parts['bpr'] + parts['reg'] +
                               0.15 * parts['mmd'])
    assert parts['cl'] > 0 and not parts['cl'].requires_grad  # still reported
    assert model.on_epoch_start(2) == {'cl_weight': 0.01}
    parts = _loss(model, *batch)
    torch.testing.assert_close(parts['total'], parts['bpr'] + parts['reg'] +
                               0.01 * parts['cl'] + 0.15 * parts['mmd'])
    # reduced_modalities: text reduced too, image not.
    model = _model(data, reduced_modalities=('text', ))
    assert model.projections['image'].reduce is None
    assert model.projections['text'].reduce.out_features == 32 // 8
    with pytest.raises(ConfigError, match="unknown modality 'txt'.*'image', 'text'"):
        _model(data, reduced_modalities=('txt', ))
    with pytest.raises(ConfigError, match='reduction_factor'):
        _model(data, reduction_factor=100)


def test_reference_defaults_reduce_image_only(data, data1):
    model = _model(data)
    assert model.reduced_modalities == ('image', )
    assert model.projections['image'].hidden_features == 64 // 8
    assert model.projections['text'].hidden_features is None
    assert _model(data1).reduced_modalities == ()


def test_paper_variant_shapes_and_training_step(data):
    model = _model(data, variant='paper').train()
    d_prime = min(64, 32) // 8
    for m in model.modalities:
        assert model.projections[m].out_features == d_prime
        assert model.dreams[m].in_channels == d_prime
        assert model.dreams[m].out_channels == 64
        assert model.dreams[m].attention == 'paper'
    user, item = model()
    assert user.shape == (data['user'].num_nodes, 64)
    assert item.shape == (data['item'].num_nodes, 64)
    parts = _loss(model, *_batch(data))
    parts['total'].backward()
    assert all(p.grad is not None for p in model.parameters())
    # InfoNCE pairs the two modalities' DREAM outputs of the batch positives.
    assert parts['cl'] > 0 and parts['mmd'] > 0
    no_la = _model(data, variant='paper', local_alignment=False)
    assert no_la.projections['image'].hidden_features == d_prime
    assert no_la.projections['image'].out_features == 64
    _loss(no_la.train(), *_batch(data))['total'].backward()


def test_all_zero_feature_rows_give_no_nan(data):
    feats = {m: data['item'][m].clone() for m in data.modalities}
    feats['image'][:7] = 0.0
    feats['text'][3:9] = 0.0
    zero = _dataset(data, feats)
    model = _model(zero, dtype=torch.float32).train()
    users, pos, _ = _batch(zero)
    neg = torch.arange(users.numel()) % 9  # negatives among the zero rows
    parts = _loss(model, users, pos, neg)
    parts['total'].backward()
    assert all(torch.isfinite(t) for t in parts.values())
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    model.eval()
    assert all(torch.isfinite(t).all() for t in model())


# ---------------------------------------------------------------------------------
# Learning and determinism
# ---------------------------------------------------------------------------------
def _train(data, steps=25, seed=0, **kw):
    """Full-batch-ish training on the tiny data; returns the BPR trajectory."""
    model = _model(data, seed=seed, dtype=torch.float32, **kw).train()
    opt = make_optimizer(model.parameters(), lr=1e-2)
    edge_index = data[UI].edge_index
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        perm = torch.randperm(edge_index.size(1), generator=g)[:256]
        neg = torch.randint(0, data['item'].num_nodes, (256, ), generator=g)
        parts = _loss(model, edge_index[0, perm], edge_index[1, perm], neg, 256)
        opt.zero_grad()
        parts['total'].backward()
        opt.step()
        losses.append(parts['bpr'].item())
    return losses


# The released InfoNCE weight keeps BPR at ln 2 for the first epochs (docs/reference.md
# §8); learning tests use cl_weight = 0.
@pytest.mark.parametrize('which', ['data1', 'data', 'data3'])
def test_model_learns(which, request):
    losses = _train(request.getfixturevalue(which), cl_weight=0.0)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses


def test_same_seed_same_trajectory(data):
    a = _train(data, steps=6, seed=3)
    b = _train(data, steps=6, seed=3)
    c = _train(data, steps=6, seed=4)
    assert a == b
    assert a != c


# ---------------------------------------------------------------------------------
# recommend
# ---------------------------------------------------------------------------------
def test_recommend_excludes_training_items(data):
    model = _model(data).train()
    users = torch.tensor([0, 5, 17, 5])
    top = model.recommend(users, 10)
    assert model.training  # mode restored
    assert top.shape == (4, 10)
    edge_index = data[UI].edge_index
    model.eval()
    with torch.no_grad():
        user_emb, item_emb = model()
    for row, u in zip(top, users):
        seen = set(edge_index[1, edge_index[0] == u].tolist())
        assert not seen & set(row.tolist())
        scores = user_emb[u] @ item_emb.t()
        scores[list(seen)] = -float('inf')
        expected = scores.topk(10).indices
        torch.testing.assert_close(scores[row], scores[expected])
    # k beyond the candidates: every unseen item, then -1, never a training item
    N = data['item'].num_nodes
    top, scores = model.recommend(users, N + 5, return_scores=True)
    assert top.shape == (4, N)
    for row, score, u in zip(top, scores, users):
        seen = set(edge_index[1, edge_index[0] == u].tolist())
        valid = row[row >= 0].tolist()
        assert len(valid) == N - len(seen) and not seen & set(valid)
        assert torch.isinf(score[row < 0]).all()
    with pytest.raises(ValueError, match='k >= 1'):
        model.recommend(users, 0)
    with pytest.raises(ValueError, match='user id 999'):
        model.recommend([999], 3)


# ---------------------------------------------------------------------------------
# Released weights interface
# ---------------------------------------------------------------------------------
def test_load_released_state_dict_names_every_bad_entry(released_tiny_dir):
    from mambarec_pyg.data import load_mmrec
    data = load_mmrec(released_tiny_dir, 'tiny')
    model = MambaRec(data, MambaRecConfig())
    weights = dict(np.load(released_tiny_dir / 'weights.npz'))
    bad = dict(weights)
    del bad['gate_v.0.bias']
    del bad['dream_text.branch3.1.running_var']
    bad['extra.weight'] = np.zeros(3)
    bad['image_trs.weight'] = np.zeros((64, 9))
    with pytest.raises(ValueError) as info:
        model.load_released_state_dict(bad)
    msg = str(info.value)
    assert '4 entries' in msg
    assert 'missing: gate_v.0.bias (expected shape (64,))' in msg
    assert 'missing: dream_text.branch3.1.running_var' in msg
    assert 'unexpected: extra.weight' in msg
    assert 'mis-shaped: image_trs.weight: expected (64, 8), got (64, 9)' in msg
    before = model.user_embedding.weight.detach().clone()
    assert torch.equal(model.user_embedding.weight, before)  # nothing loaded
    model.load_released_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    np.testing.assert_array_equal(model.item_embedding.weight.detach().numpy(),
                                  weights['item_id_embedding.weight'].astype(np.float32))
    paper = MambaRec(data, MambaRecConfig(variant='paper'))
    with pytest.raises(ValueError, match='reference-variant'):
        paper.load_released_state_dict(weights)


def test_reset_parameters_restores_features(data):
    model = _model(data, dtype=torch.float32)
    with torch.no_grad():
        model.features['image'].add_(1.0)
    model.reset_parameters()
    torch.testing.assert_close(model.features['image'], data['item']['image'])


def test_forward_checks_data_size(data, data1):
    model = _model(data)
    other = _dataset(data1, {'text': torch.zeros(3, 32)})
    other['item'].num_nodes = 3
    with pytest.raises(ValueError, match='built for'):
        model(other)
