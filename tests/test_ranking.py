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
    with pytest.raises(ValueError, match='k: expected k >= 1'):
        rank_items(torch.zeros(2, 2), torch.zeros(3, 2), torch.tensor([0]), 0)


def test_rank_items_never_returns_an_excluded_item():
    # k beyond the candidates: all candidates, then -1 with score -inf
    user = torch.tensor([[1.0], [1.0]])
    item = torch.tensor([[3.0], [2.0], [1.0]])
    exclude = ItemLists(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), 2)
    top, scores = rank_items(user, item, torch.tensor([0, 1]), 5, exclude)
    assert top.shape == (2, 3)  # at most N columns
    assert top[0].tolist() == [1, -1, -1]
    assert top[1].tolist() == [0, 2, -1]
    assert torch.isinf(scores[0, 1:]).all() and torch.isfinite(scores[1, :2]).all()
