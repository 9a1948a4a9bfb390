"""ItemKNNCBF against a dense numpy computation (shrunk cosine of the concatenated
features, top-k per item, scores R W), its sparse embeddings through the evaluator
and the ranking against the same embeddings made dense, and it beats most-popular
through the CLI (evaluated once: nothing to train)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from support import (assert_beats_popularity, feature_variants, itemknn_weights,
                     train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import ItemKNNCBF, ItemKNNCBFConfig
from mambarec_pyg.ranking import rank_items
from mambarec_pyg.train.evaluate import Evaluator

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _numpy_scores(data, k, shrink):
    W = itemknn_weights(data, k, shrink)
    R = np.zeros((data['user'].num_nodes, data['item'].num_nodes))
    ei = data[UI].edge_index.numpy()
    R[ei[0], ei[1]] = 1.0
    return R @ W


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.shrink'):
        ItemKNNCBFConfig(shrink=-1.0)
    assert ItemKNNCBFConfig.GRID == {'model.knn_k': [10], 'model.shrink': [10.0]}


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
@pytest.mark.parametrize('k, shrink', [(10, 10.0), (3, 0.0)])
def test_scores_match_numpy(variants, variant, k, shrink):
    data = variants[variant]
    model = ItemKNNCBF(data, ItemKNNCBFConfig(knn_k=k, shrink=shrink))
    assert not model.trainable
    user, item = model.embed()
    assert user.is_sparse and item.is_sparse
    want = _numpy_scores(data, k, shrink)
    got = (user.to_dense().double() @ item.to_dense().double().t()).numpy()
    # the similarities are computed in the features' float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    users = torch.tensor([0, 5, 5, 17])
    items = torch.tensor([3, 0, 59, 8])
    np.testing.assert_allclose(model.score(users, items).numpy(),
                               want[users.numpy(), items.numpy()], rtol=2e-6, atol=1e-6)


def test_sparse_embeddings_rank_like_dense_ones(tiny_data):
    model = ItemKNNCBF(tiny_data)
    user, item = model.embed()
    ev = Evaluator(tiny_data)
    for split in ('valid', 'test'):
        sparse = ev.from_embeddings(user, item, split)
        dense = ev.from_embeddings(user.to_dense(), item.to_dense(), split)
        assert sparse == dense
    users = torch.arange(tiny_data['user'].num_nodes)
    exclude = model.training_items()
    a = rank_items(user, item, users, 20, exclude, batch_size=33)
    b = rank_items(user.to_dense(), item.to_dense(), users, 20, exclude,
                   batch_size=33)
    assert torch.equal(a[1], b[1])
    # equal scores may come in any order; the score lists must agree
    assert torch.equal(model.recommend(users, k=20, return_scores=True)[1], b[1])


def test_nothing_to_train(tiny_data):
    model = ItemKNNCBF(tiny_data)
    with pytest.raises(RuntimeError, match='nothing to train'):
        model.loss(None)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'itemknncbf')
    assert_beats_popularity(results, tiny_data)
