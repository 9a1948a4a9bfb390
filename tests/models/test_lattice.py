"""LATTICE against a plain dense computation (the row-normalised user-item graph with
self-loops, the frozen and the learned kNN graphs, their mixture, the forward pass,
the loss and its gradients), the build schedule of the learned graph (with gradients
in the first training batch of an epoch, detached afterwards, fresh in eval mode),
and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     numpy_bipartite_adjacency, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import LATTICE, LATTICEConfig
from mambarec_pyg.models.lattice import self_loop_mean_adjacency


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> LATTICE:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = LATTICE(data, LATTICEConfig(**kwargs))
    with torch.no_grad():  # unequal modality weights, so the mixing is tested
        model.modal_weight.copy_(torch.linspace(0.2, 0.9, len(model.modalities)))
    return model


def _knn(sim: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k entries of each row of ``sim`` (ties: lower column), others 0."""
    out = torch.zeros_like(sim)
    order = np.argsort(-sim.detach().numpy(), axis=1, kind='stable')[:, :k]
    rows = np.arange(sim.size(0))[:, None]
    out[rows, order] = sim[rows, order]
    return out


def _sym(W: torch.Tensor) -> torch.Tensor:
    d = W.sum(1)
    inv = torch.where(d > 0, d.clamp(min=1e-300) ** -0.5, torch.zeros_like(d))
    return inv[:, None] * W * inv[None, :]


def _cos(x: torch.Tensor) -> torch.Tensor:
    xn = x / x.norm(dim=1, keepdim=True)
    return xn @ xn.t()


def _plain(model, data):
    """(user, item) of the equations, dense; the graph built with gradients."""
    c = model.config
    alpha = torch.softmax(model.modal_weight, 0)
    W = frozen = 0
    for k, m in enumerate(model.modalities):
        lin = model.projections[m]
        Z = model.features[m] @ lin.weight.t() + lin.bias
        W = W + alpha[k] * _knn(_cos(Z), c.knn_k)
        # (the frozen graphs' similarities in the features' float32, as ItemKNN)
        S = _sym(_knn(_cos(data['item'][m]).double(), c.knn_k))
        frozen = frozen + alpha[k] * S
    G = (1 - c.lambda_coeff) * _sym(W) + c.lambda_coeff * frozen
    h = model.item_embedding.weight
    for _ in range(c.n_layers):
        h = G @ h
    A = torch.from_numpy(numpy_bipartite_adjacency(data)) + torch.eye(
        model.num_users + model.num_items, dtype=torch.float64)
    A = A / A.sum(1, keepdim=True)
    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    out, hop = E, E
    for _ in range(c.n_ui_layers):
        hop = A @ hop
        out = out + hop
    out = out / (c.n_ui_layers + 1)
    U = model.num_users
    return out[:U], out[U:] + h / h.norm(dim=1, keepdim=True)


def _plain_loss(user, item, batch, reg_weight, nominal):
    u, i, j = batch
    eu, ei, ej = user[u], item[i], item[j]
    bpr = -F.logsigmoid((eu * ei).sum(1) - (eu * ej).sum(1)).mean()
    reg = reg_weight * 0.5 * (eu.pow(2).sum() + ei.pow(2).sum() + ej.pow(2).sum())
    return bpr, reg / nominal


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.lambda_coeff'):
        LATTICEConfig(lambda_coeff=1.5)
    assert LATTICEConfig.GRID == {'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3],
                                  'train.lr': [1e-4, 5e-4, 1e-3, 5e-3]}
    assert LATTICE.protocol['lr_decay'] == 0.96


def test_user_item_graph_is_row_normalised_with_self_loops(tiny_data):
    A = numpy_bipartite_adjacency(tiny_data) + np.eye(
        tiny_data['user'].num_nodes + tiny_data['item'].num_nodes)
    want = A / A.sum(1, keepdims=True)
    got = self_loop_mean_adjacency(tiny_data, torch.float64).to_dense().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant):
    data = variants[variant]
    model = _build(data, knn_k=4, n_layers=2, reg_weight=0.3, lambda_coeff=0.7).eval()
    for got, want in zip(model.embed(), _plain(model, data)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)

    # the first training batch of an epoch: the graph carries gradients
    model.train()
    model.on_epoch_start(0)
    batch = random_batch(data, 40, seed=1, nominal_size=64)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    user, item = _plain(model, data)
    bpr, reg = _plain_loss(user, item, batch, 0.3, 64)
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    (bpr + reg).backward()
    for name, p in model.named_parameters():
        # (one modality: alpha = softmax([a]) = 1 has no gradient)
        assert grads[name].abs().sum() > 0 or (name == 'modal_weight' and
                                               len(model.modalities) == 1), name
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-11,
                                   msg=name)
    model.zero_grad(set_to_none=True)

    # later batches: the same graph, detached
    parts = model.loss(random_batch(data, 40, seed=2, nominal_size=64))
    parts['total'].backward()
    for name, p in model.named_parameters():
        detached = name.startswith(('features', 'projections', 'modal_weight'))
        assert (p.grad is None) == detached, name


def test_the_graph_is_rebuilt_each_epoch_and_fresh_in_eval_mode(tiny_data):
    model = _build(tiny_data, knn_k=4).train()
    model.on_epoch_start(0)
    first = model.embed()[1].detach()
    with torch.no_grad():  # new projections: a new learned graph ...
        for lin in model.projections.values():
            lin.weight.mul_(-1.5).add_(0.01)
    torch.testing.assert_close(model.embed()[1], first)  # ... not within the epoch
    model.on_epoch_start(1)
    second = model.embed()[1].detach()
    assert not torch.allclose(second, first)
    torch.testing.assert_close(model.eval_embeddings()[1], second)
    for got, want in zip(model.eval_embeddings(), _plain(model, tiny_data)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-11)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'lattice', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '3')
    assert_beats_popularity(results, tiny_data)
