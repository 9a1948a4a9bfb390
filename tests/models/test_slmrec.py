"""SLMRec (FAC) against a plain dense re-computation of MMRec's code -- three
separate LightGCN branches, MMRec's FAC maps by name -- in values and gradients, for
1, 2 and 3 feature tables; its structure and protocol; and it learns."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli, with_modalities)

from mambarec_pyg.config import ConfigError, TrainConfig
from mambarec_pyg.models import SLMRec, SLMRecConfig
from mambarec_pyg.models.slmrec import fac_levels
from mambarec_pyg.train.trainer import resolve_protocol

UI = ('user', 'interacts', 'item')


def _lin(layer, x):
    return x @ layer.weight.t() + layer.bias


def _ce(a, b, tau):
    """-mean log softmax(a b^T / tau) on the diagonal (nn.CrossEntropyLoss)."""
    logits = a @ b.t() / tau
    return -(logits.diagonal() - logits.logsumexp(dim=1)).mean()


def _plain(model, data, users, pos, eps=0.0):
    """MMRec's SLMRec, written out densely: ``(user, item, main, [L_k])``; ``eps``
    is added to the degrees (MMRec: 1e-8)."""
    c = model.config
    U, N = data['user'].num_nodes, data['item'].num_nodes
    ei = data[UI].edge_index
    A = torch.zeros(U + N, U + N, dtype=torch.float64)
    A[ei[0], U + ei[1]] = 1.0
    A[U + ei[1], ei[0]] = 1.0
    inv = (A.sum(1) + eps) ** -0.5  # adj_type 'pre'
    A = inv[:, None] * A * inv[None, :]

    def compute_graph(u_emb, i_emb):
        x = torch.cat([u_emb, i_emb])
        embs = [x]
        for _ in range(c.n_layers):
            x = A @ x
            embs.append(x)
        return torch.stack(embs, dim=1).mean(dim=1)

    Eu, Ei = model.user_embedding.weight, model.item_embedding.weight
    branches = [compute_graph(Eu, Ei)]  # ID, then each modality
    for m in data.modalities:
        x = data['item'][m].double()
        x = x / x.norm(dim=1, keepdim=True)
        branches.append(compute_graph(Eu, _lin(model.dense[m], x)))
    user = _lin(model.user_fusion, torch.cat([b[:U] for b in branches], dim=1))
    item = _lin(model.item_fusion, torch.cat([b[U:] for b in branches], dim=1))
    main = _ce(F.normalize(user[users], dim=1), F.normalize(item[pos], dim=1), c.temp)

    # FAC with MMRec's names (g_i_iv, g_v_iv, g_iv_iva, g_a_iva, g_iva_ivat, g_t_ivat)
    items = [b[U + pos] for b in branches]
    heads = [model.modality_heads[m] for m in data.modalities]
    tau = c.ssl_temp
    x_i_iv = _lin(model.id_head, items[0])
    losses = [_ce(x_i_iv, _lin(heads[0], items[1]), tau)]  # L_v
    if len(heads) == 2:  # MMRec: audio commented out, g_iv_iva still applied
        x_iva_ivat = _lin(model.chain[1], _lin(model.chain[0], x_i_iv))
        losses.append(_ce(x_iva_ivat, _lin(heads[1], items[2]), tau))  # L_t
    elif len(heads) == 3:  # the original SLMRec: v, a, t
        x_iv_iva = _lin(model.chain[0], x_i_iv)
        losses.append(_ce(x_iv_iva, _lin(heads[1], items[2]), tau))  # L_a
        x_iva_ivat = _lin(model.chain[1], x_iv_iva)
        losses.append(_ce(x_iva_ivat, _lin(heads[2], items[3]), tau))  # L_t
    return user, item, main, losses


@pytest.mark.parametrize('names', [('text', ), ('image', 'text'),
                                   ('image', 'text', 'audio')])
def test_forward_losses_and_gradients_match_a_plain_computation(tiny_data, names):
    data = with_modalities(tiny_data, names)
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        config = SLMRecConfig(embedding_size=8, n_layers=3, temp=0.3, ssl_temp=0.5,
                              ssl_alpha=0.7)
        model = SLMRec(data, config).train()
    batch = random_batch(data, 40, seed=1, nominal_size=64)
    users, pos, _ = batch

    user, item, main, losses = _plain(model, data, users, pos)
    got_user, got_item = model.embed()
    torch.testing.assert_close(got_user, user, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_item, item, rtol=1e-10, atol=1e-12)
    # MMRec's 1e-8 degree epsilon moves values by ~1e-9 (below float32 resolution)
    mmrec_user, mmrec_item = _plain(model, data, users, pos, eps=1e-8)[:2]
    torch.testing.assert_close(got_user, mmrec_user, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(got_item, mmrec_item, rtol=1e-7, atol=1e-8)

    parts = model.loss(batch)
    assert set(parts) == {'total', 'main', 'ssl'} | {f'ssl_{m}' for m in names}
    torch.testing.assert_close(parts['main'], main)
    for m, value in zip(names, losses):
        torch.testing.assert_close(parts[f'ssl_{m}'], value)
    torch.testing.assert_close(parts['ssl'], sum(losses))
    total = main + 0.7 * sum(losses)
    torch.testing.assert_close(parts['total'], total)

    # gradients: one fused propagation of the concatenated branches vs three dense
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(parts['total'], params, allow_unused=True)
    want = torch.autograd.grad(total, params, allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        assert a is not None and b is not None, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_fac_hierarchy():
    assert fac_levels(1) == (1, [0])  # fine alignment only (SLMRec's kwai case)
    assert fac_levels(2) == (3, [0, 2])  # MMRec: v at level 0, t at level 2
    assert fac_levels(3) == (3, [0, 1, 2])  # SLMRec: v, a, t
    assert fac_levels(4) == (4, [0, 1, 2, 3])


def test_structure_protocol_and_initialisation(tiny_data):
    torch.manual_seed(0)
    model = SLMRec(tiny_data)
    assert tiny_data.modalities == ('image', 'text')
    d = 64
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    # MMRec's layers: v_dense, t_dense, the concat fusion Linear(192 -> 64) per side,
    # g_i_iv, g_v_iv, g_iv_iva, g_iva_ivat, g_t_ivat (g_a_iva unused there, absent here)
    assert shapes == {
        'user_embedding.weight': (100, d), 'item_embedding.weight': (60, d),
        'dense.image.weight': (d, 64), 'dense.image.bias': (d, ),
        'dense.text.weight': (d, 32), 'dense.text.bias': (d, ),
        'user_fusion.weight': (d, 3 * d), 'user_fusion.bias': (d, ),
        'item_fusion.weight': (d, 3 * d), 'item_fusion.bias': (d, ),
        'id_head.weight': (d, d), 'id_head.bias': (d, ),
        'chain.0.weight': (d, d), 'chain.0.bias': (d, ),
        'chain.1.weight': (d // 2, d), 'chain.1.bias': (d // 2, ),
        'modality_heads.image.weight': (d, d), 'modality_heads.image.bias': (d, ),
        'modality_heads.text.weight': (d // 2, d),
        'modality_heads.text.bias': (d // 2, ),
    }
    # Adam's weight decay 1e-4 is SLMRec's protocol; no learning-rate decay
    train = resolve_protocol(TrainConfig(), model)
    assert train.weight_decay == 1e-4 and train.lr_decay == 1.0
    # frozen, row-normalised features; not saved
    for m in tiny_data.modalities:
        x = model.features(m)
        assert not x.requires_grad and f'features_{m}' not in model.state_dict()
        torch.testing.assert_close(x.norm(dim=1), torch.ones(60))
        torch.testing.assert_close(x, F.normalize(tiny_data['item'][m], dim=1))
    # Xavier-uniform weight matrices
    w = model.user_fusion.weight
    bound = (6.0 / sum(w.shape)) ** 0.5
    assert bound * 0.9 < w.abs().max().item() <= bound


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.ssl_temp'):
        SLMRecConfig(ssl_temp=0.0)
    with pytest.raises(ConfigError, match='model.embedding_size'):
        SLMRecConfig(embedding_size=1)
    assert set(SLMRecConfig.GRID) == {'train.lr', 'model.ssl_temp', 'model.ssl_alpha'}


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'slmrec', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '8')
    assert results['config']['train']['weight_decay'] == 1e-4  # the protocol
    assert_beats_popularity(results, tiny_data)
