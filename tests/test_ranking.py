"""Top-k ranking with excluded items, against plain Python loops."""
import numpy as np
import pytest
import torch

from mambarec_pyg.ranking import ItemLists, rank_items


def _random_lists(rng, num_rows, num_items, n):
    row = rng.integers(0, num_rows, n)
    col = rng.integers(0, num_items, n)
    return row, col


def test_item_lists_slice_and_gather_match_loops():
    rng = np.random.default_rng(0)
    row, col = _random_lists(rng, 12, 30, 80)
    lists = ItemLists(torch.from_numpy(row), torch.from_numpy(col), 15)
    plain = {r: sorted(col[row == r].tolist()) for r in range(15)}

    rows, items = lists.slice(3, 9)
    got = {r: sorted(items[rows == r - 3].tolist()) for r in range(3, 9)}
    assert got == {r: plain[r] for r in range(3, 9)}

    query = torch.tensor([5, 0, 5, 14, 7])  # repeats and an empty row
    pos, items = lists.gather(query)
    for p, r in enumerate(query.tolist()):
        assert sorted(items[pos == p].tolist()) == plain[r]


def test_rank_items_matches_numpy_ranking():
    rng = np.random.default_rng(1)
    U, N, d, k = 9, 25, 4, 6
    user = torch.from_numpy(rng.standard_normal((U, d)))
    item = torch.from_numpy(rng.standard_normal((N, d)))
    row, col = _random_lists(rng, U, N, 40)
    exclude = ItemLists(torch.from_numpy(row), torch.from_numpy(col), U)
    users = torch.tensor([3, 0, 8, 3])
    top, scores = rank_items(user, item, users, k, exclude, batch_size=3)

    full = user.numpy() @ item.numpy().T
    for p, u in enumerate(users.tolist()):
        s = full[u].copy()
        s[col[row == u]] = -np.inf
        order = np.argsort(-s, kind='stable')[:k]
        assert top[p].tolist() == order.tolist()
        np.testing.assert_allclose(scores[p].numpy(), s[order])
        assert not set(top[p].tolist()) & set(col[row == u].tolist())


def test_rank_items_rejects_bad_k():
    with pytest.raises(ValueError, match='k: expected 1 <= k <= 3'):
        rank_items(torch.zeros(2, 2), torch.zeros(3, 2), torch.tensor([0]), 4)
