"""DRAGON against a plain dense computation (modality networks, the weighted
concatenation, FREEDOM's frozen item graph from numpy kNN graphs, the user
co-occurrence graph from a naive loop, the base-2 BPR and the penalties, gradients),
and it learns. The padding of the neighbour lists is DualGNN's (tested there)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     naive_user_graph, naive_user_neighbours,
                     numpy_normalized_adjacency, plain_cooccurrence_loss,
                     plain_modality_representations, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import DRAGON, DRAGONConfig
from mambarec_pyg.models.freedom import modality_weights


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> DRAGON:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return DRAGON(data, DRAGONConfig(**kwargs))


def _numpy_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Binary top-k cosine graph (self included), sym-normalised by row sums."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    A = np.zeros_like(sim)
    for i in range(len(sim)):
        A[i, np.argsort(-sim[i], kind='stable')[:k]] = 1.0
    d = A.sum(1) ** -0.5
    return d[:, None] * A * d[None, :]


def _plain(model, data):
    c = model.config
    U = model.num_users
    reps = plain_modality_representations(model, data, numpy_normalized_adjacency(data))
    if len(reps) == 1:
        user, item = reps[0][:U], reps[0][U:]
    else:
        user = torch.cat([model.user_weight[:, m:m + 1] * r[:U]
                          for m, r in enumerate(reps)], dim=1)
        item = torch.cat([r[U:] for r in reps], dim=1)
    weights = modality_weights(model.modalities, c.mm_image_weight)
    S = torch.from_numpy(sum(w * _numpy_knn(data['item'][m].double().numpy(), c.knn_k)
                             for m, w in weights.items()))
    h = item
    for _ in range(c.n_mm_layers):
        h = S @ h
    W = naive_user_graph(naive_user_neighbours(data, c.user_knn_k), U)
    return user + W @ user, item + h


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.mm_image_weight'):
        DRAGONConfig(mm_image_weight=2.0)
    with pytest.raises(ConfigError, match='model.n_mm_layers'):
        DRAGONConfig(n_mm_layers=-1)
    assert DRAGONConfig.GRID['train.lr'] == [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant):
    data = variants[variant]
    model = _build(data, reg_weight=0.1, user_knn_k=12, knn_k=4, n_mm_layers=2,
                   mm_image_weight=0.3).eval()
    user, item = model.embed()
    width = model.config.embedding_size * len(model.modalities)
    assert user.shape[1] == item.shape[1] == width
    pu, pi = _plain(model, data)
    torch.testing.assert_close(user, pu, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(item, pi, rtol=1e-9, atol=1e-11)

    batch = random_batch(data, 48, seed=1)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    bpr, reg = plain_cooccurrence_loss(model, pu, pi, batch, 0.1)
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    (bpr + reg).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-11,
                                   msg=name)


def test_training_mode_uses_the_padded_user_graph(tiny_data):
    model = _build(tiny_data, user_knn_k=40).train()
    torch.manual_seed(2)
    model.on_epoch_start(0)
    reps = plain_modality_representations(model, tiny_data,
                                          numpy_normalized_adjacency(tiny_data))
    U = model.num_users
    user = torch.cat([model.user_weight[:, m:m + 1] * r[:U]
                      for m, r in enumerate(reps)], dim=1)
    padded = model.graphs['user_graph_padded'].to_dense()
    torch.testing.assert_close(model.embed()[0], user + padded @ user)
    assert not torch.allclose(padded, model.graphs['user_graph'].to_dense())


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'dragon', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '4')
    assert_beats_popularity(results, tiny_data)
