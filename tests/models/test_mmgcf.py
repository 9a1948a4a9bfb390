"""MMGCF against a plain computation (dense adjacency powers, every fusion mode and
weighting, loss parts and gradients), its edge dropout (pruned graph in training,
full graph in eval), and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, assert_grads_match, build_float64,
                     feature_variants, loss_and_grads, numpy_normalized_adjacency,
                     random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import MMGCF, MMGCFConfig


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> MMGCF:
    return build_float64(MMGCF, data, **kwargs)


def _plain(model, data, A):
    """Layer mean, then MMRec's late fusion written out per mode."""
    c = model.config
    U = model.num_users
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h, out = E, E
    for _ in range(c.n_ui_layers):
        h = A @ h
        out = out + h
    out = out / (c.n_ui_layers + 1)
    user, item = out[:U], out[U:]
    feats = [data['item'][m].double() @ model.projections[m].weight.t() +
             model.projections[m].bias for m in model.modalities]
    if not feats:
        return user, item

    def fuse(xs, name):
        if c.fusion_mode == 'mean':
            return sum(xs) / len(xs)
        if c.fusion_mode == 'sum':
            return sum(xs)
        layer = model.concat[name]
        return torch.cat(xs, dim=1) @ layer.weight.t() + layer.bias

    if c.weighting == 'alpha':
        a = 1.0 / (1.0 + torch.exp(-model.mm_alpha))
        return user, fuse([a * item] + [(1 - a) * f for f in feats], 'all')
    if c.weighting == 'normalized':
        unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
        return user, fuse([len(feats) * unit(item)] + [unit(f) for f in feats], 'all')
    mm = fuse(feats, 'modalities') if len(feats) > 1 else feats[0]
    return user, fuse([item, mm], 'id_modalities')


@pytest.mark.parametrize('fusion_mode', ['mean', 'sum', 'concat'])
@pytest.mark.parametrize('weighting', ['equal', 'alpha', 'normalized'])
@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant,
                                                               fusion_mode, weighting):
    data = variants[variant]
    model = _build(data, n_ui_layers=3, reg_weight=0.07, fusion_mode=fusion_mode,
                   weighting=weighting).eval()  # eval: the full graph
    A = numpy_normalized_adjacency(data)
    user, item = model.embed()
    pu, pi = _plain(model, data, A)
    torch.testing.assert_close(user, pu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, pi, rtol=1e-10, atol=1e-12)

    batch = random_batch(data, 40, seed=2, nominal_size=64)
    parts, grads = loss_and_grads(model, batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    u, i, j = batch
    pu, pi = _plain(model, data, A)
    bpr = -F.logsigmoid((pu[u] * pi[i]).sum(1) - (pu[u] * pi[j]).sum(1)).mean()
    Eu, Ei = model.user_embedding.weight, model.item_embedding.weight
    # MMRec divides by the batch's own length (40), not the configured size
    reg = 0.07 * (Eu[u].norm() ** 2 + Ei[i].norm() ** 2 + Ei[j].norm() ** 2) / 80
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    assert_grads_match(model, bpr + reg, grads)


def test_layers_that_exist(tiny_data, variants):
    assert set(_build(tiny_data, fusion_mode='concat').concat) == \
        {'modalities', 'id_modalities'}
    assert set(_build(variants['text'], fusion_mode='concat').concat) == \
        {'id_modalities'}
    assert set(_build(tiny_data, fusion_mode='concat', weighting='alpha').concat) == \
        {'all'}
    assert _build(tiny_data, weighting='alpha').mm_alpha.item() == 0.0
    assert _build(tiny_data).mm_alpha is None and not _build(tiny_data).concat


def test_without_features_it_is_lightgcn(variants, tiny_data):
    from support import with_item_features
    data = with_item_features(tiny_data, {})
    model = _build(data, n_ui_layers=2).eval()
    user, item = model.embed()
    pu, pi = _plain(model, data, numpy_normalized_adjacency(data))
    torch.testing.assert_close(item, pi, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(user, pu, rtol=1e-10, atol=1e-12)


def test_edge_dropout_in_training_full_graph_in_eval(tiny_data):
    model = _build(tiny_data, dropout=0.8, n_ui_layers=1, weighting='normalized')
    model.train()
    full = model.embed()
    torch.manual_seed(5)
    model.on_epoch_start(0)
    pruned = model.graphs['pruned'].to_dense()
    U = model.num_users
    assert (pruned[:U, U:] != 0).sum() == int(777 * 0.2)
    pu, pi = _plain(model, tiny_data, pruned)
    user, item = model.embed()
    torch.testing.assert_close(user, pu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, pi, rtol=1e-10, atol=1e-12)
    for a, b in zip(model.eval_embeddings(), full):
        torch.testing.assert_close(a, b)
    torch.manual_seed(5)
    model.on_epoch_start(1)
    assert torch.equal(model.graphs['pruned'].to_dense(), pruned)  # global RNG
    no_drop = _build(tiny_data, dropout=0.0).train()
    state = torch.get_rng_state()
    no_drop.on_epoch_start(0)
    assert 'pruned' not in no_drop.graphs and torch.equal(state, torch.get_rng_state())


def test_config_defaults_grid_and_errors():
    c = MMGCFConfig()
    assert (c.n_ui_layers, c.reg_weight, c.fusion_mode, c.weighting, c.dropout) == \
        (2, 1e-3, 'mean', 'equal', 0.5)
    assert np.prod([len(v) for v in MMGCFConfig.GRID.values()]) == 324
    for key, bad in [('fusion_mode', 'prod'), ('weighting', 'none'),
                     ('dropout', 1.0), ('n_ui_layers', -1), ('reg_weight', -1.0)]:
        with pytest.raises(ConfigError, match=f'model.{key}'):
            MMGCFConfig(**{key: bad})
    with pytest.raises(ConfigError, match='model.feat_embed_dim'):
        MMGCFConfig(feat_embed_dim=32)
    assert MMGCFConfig(feat_embed_dim=32, fusion_mode='concat').feat_embed_dim == 32


def test_concat_with_another_feature_width(tiny_data):
    model = _build(tiny_data, feat_embed_dim=16, fusion_mode='concat').eval()
    pu, pi = _plain(model, tiny_data, numpy_normalized_adjacency(tiny_data))
    torch.testing.assert_close(model.embed()[1], pi, rtol=1e-10, atol=1e-12)
    assert pi.shape == (60, 64)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'mmgcf', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '10')
    assert_beats_popularity(results, tiny_data)
