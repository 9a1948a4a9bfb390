"""The user-user co-occurrence graph (DualGNN, DRAGON): against a naive loop written
from MMRec's ``dualgnn-gen-u-u-matrix.py``, in blocks as in one piece, from the
training split only, and cached by the training edges alone."""
from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch_geometric.data import HeteroData

from mambarec_pyg.data import DataError
from mambarec_pyg.data.graphs import user_cooccurrence_edges
from mambarec_pyg.data.transforms import (UserCooccurrence, apply_transforms,
                                          cooccurrence_relation)

UI = ('user', 'interacts', 'item')


def _naive(edge_index, num_users, k):
    """MMRec's loop: item sets per user, the intersection size of every pair of
    users, then per user the k largest positive counts (ties: lower id)."""
    items = defaultdict(set)
    for u, i in edge_index.t().tolist():
        items[u].add(i)
    out = {}
    for u in range(num_users):
        counts = [(len(items[u] & items[v]), v) for v in range(num_users) if v != u]
        counts = sorted([(-c, v) for c, v in counts if c > 0])[:k]
        out[u] = [(v, -c) for c, v in counts]
    return out


def _as_lists(edge_index, count, num_users):
    out = {u: [] for u in range(num_users)}
    for v, u, c in zip(edge_index[0].tolist(), edge_index[1].tolist(),
                       count.tolist()):
        out[u].append((v, c))
    return out


def _random_edges(num_users=30, num_items=25, num_edges=140, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(0, num_users - 2, (num_edges, ), generator=g)  # 2 isolated
    items = torch.randint(0, num_items, (num_edges, ), generator=g)
    edge_index = torch.stack([users, items])
    return torch.cat([edge_index, edge_index[:, :10]], dim=1)  # some repeated pairs


@pytest.mark.parametrize('k', [1, 3, 100])
@pytest.mark.parametrize('block_entries', [1, 50, 1 << 23])
def test_matches_a_naive_loop(k, block_entries):
    edge_index = _random_edges()
    got_index, count = user_cooccurrence_edges(edge_index, 30, 25, k,
                                               block_entries=block_entries)
    assert count.dtype == torch.float64
    assert got_index.size(1) == count.numel()
    assert _as_lists(got_index, count, 30) == _naive(edge_index, 30, k)
    # sorted by user (the target), then by descending count
    dst = got_index[1]
    assert bool((dst[1:] >= dst[:-1]).all())
    same = dst[1:] == dst[:-1]
    assert bool((count[1:][same] <= count[:-1][same]).all())


def test_no_self_loops_and_isolated_users_have_no_neighbours():
    edge_index = _random_edges()
    ei, _ = user_cooccurrence_edges(edge_index, 30, 25, 100)
    assert not bool((ei[0] == ei[1]).any())
    assert not ({28, 29} & set(ei.flatten().tolist()))


def test_bad_input_is_named():
    with pytest.raises(DataError, match='k >= 1'):
        user_cooccurrence_edges(_random_edges(), 30, 25, 0)
    bad = torch.tensor([[0, 1], [0, 99]])
    with pytest.raises(DataError, match=r'item id 99, expected 0 <= id < 25'):
        user_cooccurrence_edges(bad, 30, 25, 3)
    with pytest.raises(ValueError, match='positive integer'):
        UserCooccurrence(k=0)


def _data(valid=None, test=None) -> HeteroData:
    """Users 0-5, items 0-5; in training only users 0 and 1 share an item (item 0),
    users 2 and 3 share two (items 1, 2); the evaluation edges would link 4 and 5
    (both get item 3) and 0 with 2 (item 1)."""
    data = HeteroData()
    data['user'].num_nodes = 6
    data['item'].num_nodes = 6
    data[UI].edge_index = torch.tensor([[0, 1, 2, 2, 3, 3, 4, 5, 0],
                                        [0, 0, 1, 2, 1, 2, 4, 5, 5]])
    data[UI].valid_edge_label_index = valid if valid is not None else \
        torch.tensor([[4, 5], [3, 3]])
    data[UI].test_edge_label_index = test if test is not None else \
        torch.tensor([[0, 2], [1, 4]])
    return data


def test_the_transform_reads_the_training_split_only(tmp_path):
    data = _data()
    out = UserCooccurrence(k=4)(data)
    store = out['user', cooccurrence_relation(4), 'user']
    pairs = {(v, u): c for v, u, c in zip(store.edge_index[0].tolist(),
                                          store.edge_index[1].tolist(),
                                          store.edge_weight.tolist())}
    # the training co-occurrences, both directions; user 0 and 5 share item 5
    assert pairs == {(1, 0): 1.0, (0, 1): 1.0, (3, 2): 2.0, (2, 3): 2.0,
                     (5, 0): 1.0, (0, 5): 1.0}
    # valid (4, 5 via item 3) and test (0, 2 via item 1; 2, 4 via item 4) never enter
    assert (4, 5) not in pairs and (5, 4) not in pairs and (0, 2) not in pairs
    assert (UserCooccurrence(4).edge_type) == ('user', 'cooccur4', 'user')
    # the input is not modified
    assert ('user', 'cooccur4', 'user') not in data.edge_types

    # cached by the training edges alone: other evaluation edges hit the same file
    first = apply_transforms(data, [UserCooccurrence(4)], tmp_path)
    files = sorted(tmp_path.glob('UserCooccurrence-*.pt'))
    assert len(files) == 1
    other = _data(valid=torch.tensor([[2, 3], [5, 0]]),
                  test=torch.tensor([[1, 4], [3, 3]]))
    again = apply_transforms(other, [UserCooccurrence(4)], tmp_path)
    assert sorted(tmp_path.glob('UserCooccurrence-*.pt')) == files
    et = ('user', 'cooccur4', 'user')
    assert torch.equal(again[et].edge_index, first[et].edge_index)
    # new training edges, or another k: another graph, another file
    changed = _data()
    changed[UI].edge_index = changed[UI].edge_index[:, :-1]
    apply_transforms(changed, [UserCooccurrence(4)], tmp_path)
    apply_transforms(data, [UserCooccurrence(2)], tmp_path)
    assert len(list(tmp_path.glob('UserCooccurrence-*.pt'))) == 3


def test_transform_matches_the_function_on_tiny(tiny_data):
    out = UserCooccurrence(k=40)(tiny_data)
    store = out['user', 'cooccur40', 'user']
    ei, count = user_cooccurrence_edges(tiny_data[UI].edge_index,
                                        tiny_data['user'].num_nodes,
                                        tiny_data['item'].num_nodes, 40)
    assert torch.equal(store.edge_index, ei) and torch.equal(store.edge_weight, count)
    U = tiny_data['user'].num_nodes
    assert _as_lists(ei, count, U) == _naive(tiny_data[UI].edge_index, U, 40)
