"""Evaluation at scale: users scored against blocks of items with a running top-k
(equal to the full-score evaluation), and validation on a fixed sample of users."""
from __future__ import annotations

import pytest
import torch

from mambarec_pyg.data import make_synthetic
from mambarec_pyg.errors import ConfigError
from mambarec_pyg.config import TrainConfig
from mambarec_pyg.train.evaluate import Evaluator

from support import train_through_cli


@pytest.fixture(scope='module')
def data():
    return make_synthetic('tiny', 0)


def _embeddings(data, seed=0):
    g = torch.Generator().manual_seed(seed)
    # continuous random scores: no ties, so the lists are fully determined
    return (torch.randn(data['user'].num_nodes, 8, generator=g, dtype=torch.float64),
            torch.randn(data['item'].num_nodes, 8, generator=g, dtype=torch.float64))


@pytest.mark.parametrize('block', [1, 7, 59, 60, 1000])
@pytest.mark.parametrize('split', ['valid', 'test'])
def test_item_blocks_equal_full_scores(data, block, split):
    u, i = _embeddings(data)
    full = Evaluator(data, ks=(1, 5, 20, 50), batch_size=13)
    blocked = Evaluator(data, ks=(1, 5, 20, 50), batch_size=13, item_block=block)
    a = full.from_embeddings(u, i, split, per_user=True)
    b = blocked.from_embeddings(u, i, split, per_user=True)
    for key, value in a.items():
        if key == 'per_user':
            for name, v in value.items():
                assert torch.equal(v, b['per_user'][name]), name
        else:
            assert value == b[key], key


def test_valid_sample_is_fixed_and_exact(data):
    u, i = _embeddings(data, 1)
    full = Evaluator(data, ks=(10, 20)).from_embeddings(u, i, 'valid', per_user=True)
    ev = Evaluator(data, ks=(10, 20), sample={'valid': 25}, sample_seed=3)
    got = ev.from_embeddings(u, i, 'valid', per_user=True)
    users = got['per_user']['users']
    assert got['num_users'] == 25 == torch.unique(users).numel()
    again = Evaluator(data, ks=(10, 20), sample={'valid': 25}, sample_seed=3)
    assert torch.equal(again.from_embeddings(u, i, 'valid', per_user=True)
                       ['per_user']['users'], users)
    # each sampled user's metrics are those of the full evaluation
    pos = torch.searchsorted(full['per_user']['users'], users)
    assert torch.equal(full['per_user']['users'][pos], users)
    for name in ('recall@20', 'ndcg@10'):
        want = full['per_user'][name][pos]
        assert torch.equal(got['per_user'][name], want)
        assert got[name] == pytest.approx(float(want.double().mean()), rel=1e-6)
    # the test split is not sampled
    assert ev.from_embeddings(u, i, 'test')['num_users'] == \
        Evaluator(data).from_embeddings(u, i, 'test')['num_users']


def test_options_checked_and_used_in_training(tmp_path):
    with pytest.raises(ConfigError, match='train.valid_users'):
        TrainConfig(valid_users=-1)
    with pytest.raises(ConfigError, match='train.eval_item_block'):
        TrainConfig(eval_item_block=-2)
    results = train_through_cli(tmp_path, 'lightgcn', '--train.max-epochs', '2',
                                '--train.valid-users', '30',
                                '--train.eval-item-block', '16')
    assert results['valid']['num_users'] == 30
    assert results['test']['num_users'] > 30
