"""The evaluator against a plain numpy implementation of the formulas of
docs/reference.md §1."""
import math

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from mambarec_pyg.data.index import training_index
from mambarec_pyg.models import Popularity
from mambarec_pyg.ranking import rank_items
from mambarec_pyg.train.evaluate import (Evaluator, evaluate, get_evaluator,
                                         per_user_metrics, recommend)

UI = ('user', 'interacts', 'item')


def _dataset(U=40, N=30, seed=0, many_gt_user=True):
    """Random splits; user 0 has more valid items than K=5; user U-1 has no valid."""
    g = np.random.default_rng(seed)
    train, valid, test = [], [], []
    for u in range(U):
        items = g.permutation(N)
        nt = int(g.integers(1, 6))
        nv = 12 if (u == 0 and many_gt_user) else int(g.integers(0 if u == U - 1 else 1,
                                                                 4))
        if u == U - 1:
            nv = 0
        ne = int(g.integers(1, 4))
        train += [(u, i) for i in items[:nt]]
        valid += [(u, i) for i in items[nt:nt + nv]]
        test += [(u, i) for i in items[nt + nv:nt + nv + ne]]
    data = HeteroData()
    data['user'].num_nodes = U
    data['item'].num_nodes = N
    data[UI].edge_index = torch.tensor(train).t().contiguous()
    data[UI].valid_edge_label_index = torch.tensor(valid).t().contiguous()
    data[UI].test_edge_label_index = torch.tensor(test).t().contiguous()
    return data


class Fixed(torch.nn.Module):
    def __init__(self, user_emb, item_emb):
        super().__init__()
        self.u = torch.nn.Parameter(user_emb)
        self.i = torch.nn.Parameter(item_emb)

    def forward(self, data=None):
        return self.u, self.i


def _reference(scores, data, split, ks):
    """docs/reference.md §1, written plainly over numpy arrays."""
    train = data[UI].edge_index.numpy()
    gt = data[UI][f'{split}_edge_label_index'].numpy()
    out = {f'{m}@{k}': [] for m in ('recall', 'ndcg', 'precision', 'map') for k in ks}
    for u in sorted(set(gt[0].tolist())):
        s = scores[u].astype(np.float64).copy()
        s[train[1, train[0] == u]] = -np.inf
        ranking = np.argsort(-s, kind='stable')
        truth = set(gt[1, gt[0] == u].tolist())
        for k in ks:
            rel = np.array([1.0 if i in truth else 0.0 for i in ranking[:k]])
            hits = rel.sum()
            out[f'recall@{k}'].append(hits / len(truth))
            out[f'precision@{k}'].append(hits / k)
            dcg = sum(r / math.log2(p + 2) for p, r in enumerate(rel))
            idcg = sum(1 / math.log2(p + 2) for p in range(min(len(truth), k)))
            out[f'ndcg@{k}'].append(dcg / idcg)
            prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
            out[f'map@{k}'].append((prec * rel).sum() / min(len(truth), k))
    return {k: float(np.mean(v)) for k, v in out.items()}


@pytest.mark.parametrize('split', ['valid', 'test'])
@pytest.mark.parametrize('batch_size', [7, 4096])
def test_metrics_match_numpy_reference(split, batch_size):
    data = _dataset()
    torch.manual_seed(0)
    # continuous random scores: no ties, so the ranking is unambiguous
    model = Fixed(torch.randn(40, 8), torch.randn(30, 8))
    ks = (1, 5, 10, 20)
    got = Evaluator(data, ks=ks, batch_size=batch_size)(model, split)
    scores = (model.u @ model.i.t()).detach().numpy()
    want = _reference(scores, data, split, ks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert got['num_users'] == len(set(data[UI][f'{split}_edge_label_index'][0].tolist()))


def test_user_with_more_ground_truth_than_k_is_not_penalised():
    # user 0 has 12 valid items; a model that ranks exactly those first gets 1.0 at K=5
    data = _dataset()
    gt = data[UI].valid_edge_label_index
    scores = torch.zeros(40, 30)
    scores[gt[0], gt[1]] = 1.0 + torch.rand(gt.size(1))
    model = Fixed(scores, torch.eye(30))
    got = Evaluator(data, ks=(5, ))(model, 'valid')
    assert got['ndcg@5'] == pytest.approx(1.0)
    assert got['map@5'] == pytest.approx(1.0)


def test_training_items_never_ranked_and_test_does_not_mask_valid():
    data = _dataset()
    train = data[UI].edge_index
    valid = data[UI].valid_edge_label_index
    # Training items score highest, then valid items; small noise breaks ties.
    torch.manual_seed(1)
    scores = 0.01 * torch.rand(40, 30)
    scores[train[0], train[1]] += 100.0
    scores[valid[0], valid[1]] += 50.0
    model = Fixed(scores, torch.eye(30))
    ev = Evaluator(data, ks=(5, ))
    users = torch.arange(40)
    top, _ = rank_items(model.u, model.i, users, 5, training_index(data).user_items)
    owned = set(map(tuple, train.t().tolist()))
    for u, row in zip(users.tolist(), top.tolist()):
        assert not any((u, i) in owned for i in row)
        vu = set(valid[1, valid[0] == u].tolist())
        # valid items are not masked: they come right after the training ones
        assert set(row[:min(len(vu), 5)]) <= vu
    got = ev(model, 'test')
    want = _reference(scores.numpy(), data, 'test', (5, ))
    assert got['recall@5'] == pytest.approx(want['recall@5'], rel=1e-5)
    # masking valid items as well would give other numbers
    both = torch.cat([train, valid], 1)
    masked = scores.clone()
    masked[both[0], both[1]] = -1e9
    leaky = _reference(masked.numpy(), data, 'test', (5, ))
    assert got['recall@5'] < leaky['recall@5'] - 0.05


def test_popularity_ranks_by_training_count():
    data = _dataset()
    pop = Popularity(data)
    u, i = pop(data)
    counts = torch.bincount(data[UI].edge_index[1], minlength=30).float()
    assert torch.equal((u @ i.t())[3], counts)
    items, scores = recommend(pop, torch.arange(40), k=5)
    train = data[UI].edge_index
    for user in range(40):
        own = set(train[1, train[0] == user].tolist())
        top = items[user].tolist()
        assert not own & set(top)
        assert torch.equal(scores[user], counts[items[user]])
        assert (scores[user][:-1] >= scores[user][1:]).all()
        rest = [j for j in range(30) if j not in own and j not in top]
        assert counts[rest].max() <= scores[user].min()
    got = evaluate(pop, data, 'valid', ks=(5, 10))
    assert 0.0 < got['recall@10'] <= 1.0 and got['num_users'] == 39


def test_evaluate_caches_structures_and_rebuilds_on_change():
    data = _dataset()
    a = get_evaluator(data, (5, ), 4096, 'cpu')
    assert get_evaluator(data, (5, ), 4096, 'cpu') is a
    data[UI].valid_edge_label_index = data[UI].valid_edge_label_index[:, :10].clone()
    assert get_evaluator(data, (5, ), 4096, 'cpu') is not a


def test_restores_training_mode_and_no_grad():
    data = _dataset()
    model = Fixed(torch.randn(40, 4), torch.randn(30, 4))
    model.train()
    evaluate(model, data, 'valid')
    assert model.training
    assert model.u.grad is None


def test_bad_inputs_are_named():
    data = _dataset()
    with pytest.raises(ValueError, match='user embeddings: expected \\[40, d\\]'):
        Evaluator(data).from_embeddings(torch.randn(3, 4), torch.randn(30, 4))
    with pytest.raises(ValueError, match="split: expected 'valid' or 'test'"):
        evaluate(Fixed(torch.randn(40, 4), torch.randn(30, 4)), data, 'train')
    with pytest.raises(ValueError, match='user id 99'):
        recommend(Popularity(data), [0, 99])


def test_k_larger_than_item_count():
    data = _dataset()
    model = Fixed(torch.randn(40, 8), torch.randn(30, 8))
    got = Evaluator(data, ks=(50, ))(model, 'valid')
    want = _reference((model.u @ model.i.t()).detach().numpy(), data, 'valid', (50, ))
    assert got['recall@50'] == pytest.approx(1.0)
    assert got['precision@50'] == pytest.approx(want['precision@50'], rel=1e-5)
    assert got['ndcg@50'] == pytest.approx(want['ndcg@50'], rel=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    data = _dataset()
    torch.manual_seed(0)
    model = Fixed(torch.randn(40, 8), torch.randn(30, 8))
    cpu = evaluate(model, data, 'valid')
    gpu = evaluate(model.cuda(), data, 'valid')
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_per_user_metrics_average_to_the_reported_ones():
    data = _dataset()
    torch.manual_seed(2)
    model = Fixed(torch.randn(40, 6), torch.randn(30, 6))
    ks = (5, 10, 20)
    got = Evaluator(data, ks=ks)(model, 'test', per_user=True)
    per = got['per_user']
    users = sorted(set(data[UI].test_edge_label_index[0].tolist()))
    assert per['users'].tolist() == users
    want = _reference((model.u @ model.i.t()).detach().numpy(), data, 'test', ks)
    for k in ks:
        for m in ('recall', 'ndcg'):
            values = per[f'{m}@{k}']
            assert values.shape == (len(users), )
            assert float(values.mean()) == pytest.approx(got[f'{m}@{k}'], rel=1e-6)
            assert float(values.mean()) == pytest.approx(want[f'{m}@{k}'], rel=1e-6)


def test_per_user_metrics_formulas_by_hand():
    from mambarec_pyg.ranking import ItemLists
    top = torch.tensor([[3, 1, 2], [0, 4, 5]])
    truth = ItemLists(torch.tensor([0, 0, 1]), torch.tensor([1, 7, 9]), 2)
    out = per_user_metrics(top, truth, (1, 3))
    assert out['recall@1'].tolist() == [0.0, 0.0]
    assert out['recall@3'].tolist() == [0.5, 0.0]
    # user 0: a hit at rank 2 of 2 relevant: DCG 1/log2(3), IDCG 1 + 1/log2(3)
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert out['ndcg@3'][0].item() == pytest.approx(expected, rel=1e-12)
    assert out['ndcg@3'][1].item() == 0.0
