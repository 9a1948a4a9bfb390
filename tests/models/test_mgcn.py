"""MGCN: MambaRec's encoder without DREAM, MMD and the reduction -- checked against
a plain re-computation, and it learns."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli)

from mambarec_pyg.models import MGCN, MGCNConfig


def test_structure_is_mgcn(tiny_data):
    model = MGCN(tiny_data)
    assert model.dreams is None and model.norm is None
    assert model.reduced_modalities == ()
    for m in model.modalities:
        assert model.projections[m].hidden_features is None  # one Linear(D_m -> d)
    assert model.spec.ui_layers == 2 and model.spec.ii_layers == 1
    assert MGCN.protocol['lr_decay'] == 0.96


def test_forward_and_loss_match_a_plain_computation(tiny_data):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = MGCN(tiny_data, MGCNConfig(cl_weight=0.3, reg_weight=0.01)).train()
    U = model.num_users
    adj = model.graphs['adj'].to_dense()
    r_hat = model.graphs['r_hat'].to_dense()
    # plain MGCN (BASELINES.md §3.8), dense matrices, no fused paths
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    layers = [E, adj @ E, adj @ (adj @ E)]
    C = sum(layers) / 3
    views = []
    for m in model.modalities:
        feats = model.features[m] @ model.projections[m].trs.weight.t() + \
            model.projections[m].trs.bias
        H = model.item_embedding.weight * torch.sigmoid(model.item_gates[m](feats))
        H = model.graphs[f'item_graph_{m}'].to_dense() @ H
        views.append(torch.cat([r_hat @ H, H]))
    q = torch.stack([model.fusion.query(z) for z in views])
    a = torch.softmax(q, dim=0)
    common = (a * torch.stack(views)).sum(0)
    side = common + sum(torch.sigmoid(model.fusion.preference_gates[m](C)) *
                        (z - common) for m, z in zip(model.modalities, views))
    side = side / 3
    final = C + side
    user, item = model.embed()
    torch.testing.assert_close(user, final[:U], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, final[U:], rtol=1e-10, atol=1e-12)

    batch = random_batch(tiny_data, 40, seed=1, nominal_size=64)
    u, i, j = batch
    parts = model.loss(batch)
    eu, ei_, ej = final[u], final[U + i], final[U + j]
    bpr = -F.logsigmoid((eu * ei_).sum(1) - (eu * ej).sum(1)).mean()
    reg = 0.01 * (eu.square().sum() + ei_.square().sum() + ej.square().sum()) / 2 / 64

    def nce(x, y):
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
        logits = x @ y.t() / 0.2
        return -(logits.diag() - logits.logsumexp(1)).mean()

    cl = nce(side[U + i], C[U + i]) + nce(side[u], C[u])
    assert set(parts) == {'total', 'bpr', 'reg', 'cl'}
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    torch.testing.assert_close(parts['cl'], cl)
    torch.testing.assert_close(parts['total'], bpr + reg + 0.3 * cl)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'mgcn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '12')
    assert_beats_popularity(results, tiny_data)
