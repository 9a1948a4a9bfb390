"""BPR training pairs and negative sampling (docs/reference.md §1)."""
import numpy as np
import pytest
import torch
from scipy import stats

from mambarec_pyg.data.sampling import (NegativeSamplingError, TrainingPairs,
                                        sample_negatives)


def _random_edges(num_users=50, num_items=40, per_user=6, seed=0):
    g = np.random.default_rng(seed)
    rows, cols = [], []
    for u in range(num_users):
        k = g.integers(1, per_user + 1)
        items = g.choice(num_items - 5, size=k, replace=False)  # last 5 never trained
        rows += [u] * k
        cols += items.tolist()
    return torch.tensor([rows, cols])


def test_negatives_never_training_items_and_only_training_pool():
    ei = _random_edges()
    g = torch.Generator().manual_seed(1)
    train = set(map(tuple, ei.t().tolist()))
    pool = set(ei[1].tolist())
    for _ in range(20):
        neg = sample_negatives(ei, 40, generator=g)
        assert neg.shape == (ei.size(1), )
        for u, j in zip(ei[0].tolist(), neg.tolist()):
            assert (u, j) not in train
            assert j in pool


def test_uniform_over_complement_chi_square():
    # user 0 owns items {0, 1, 2}; items 7..9 never occur in training.
    ei = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 3],
                       [0, 1, 2, 3, 4, 5, 6, 0]])
    pairs = TrainingPairs(ei, num_items=10)
    g = torch.Generator().manual_seed(0)
    draws = pairs.sample_negatives(torch.zeros(40_000, dtype=torch.long), g)
    counts = torch.bincount(draws, minlength=10).numpy()
    assert counts[[0, 1, 2, 7, 8, 9]].sum() == 0  # owned / unseen never drawn
    allowed = counts[3:7]
    assert stats.chisquare(allowed).pvalue > 1e-3


def test_exact_complement_sampling_matches_rejection_distribution():
    # A user owning 27 of 30 items: rejection hands over to exact complement sampling.
    items = torch.arange(30)
    owned = items[:27]
    ei = torch.stack([torch.cat([torch.zeros(27, dtype=torch.long),
                                 torch.ones(30, dtype=torch.long)]),
                      torch.cat([owned, items])])
    ei = ei[:, ei[0] * 100 + ei[1] != 100 + 5]  # user 1 owns all but item 5
    pairs = TrainingPairs(ei, 30, max_rounds=0)  # exact path only
    g = torch.Generator().manual_seed(3)
    draws = pairs.sample_negatives(torch.zeros(6000, dtype=torch.long), g)
    counts = torch.bincount(draws, minlength=30).numpy()
    assert counts[:27].sum() == 0
    assert stats.chisquare(counts[27:]).pvalue > 1e-3
    d1 = pairs.sample_negatives(torch.ones(100, dtype=torch.long), g)
    assert (d1 == 5).all()
    # the plain rejection path gives the same support and shape of distribution
    plain = TrainingPairs(ei, 30, max_rounds=10_000)
    draws = plain.sample_negatives(torch.zeros(6000, dtype=torch.long), g)
    c2 = torch.bincount(draws, minlength=30).numpy()
    assert c2[:27].sum() == 0
    assert stats.chi2_contingency(np.stack([counts[27:], c2[27:]])).pvalue > 1e-3


def test_complement_sampling_on_random_graph_never_hits_training():
    ei = _random_edges(num_users=30, num_items=20, per_user=12, seed=4)
    pairs = TrainingPairs(ei, 20, max_rounds=0)
    g = torch.Generator().manual_seed(0)
    users = ei[0].repeat(50)
    neg = pairs.sample_negatives(users, g)
    assert not pairs.is_training_pair(users, neg).any()
    assert torch.isin(neg, pairs.candidates).all()


def test_is_training_pair_matches_set_membership():
    ei = _random_edges(seed=2)
    pairs = TrainingPairs(ei, 40)
    train = set(map(tuple, ei.t().tolist()))
    u = torch.randint(0, 50, (2000, ))
    i = torch.randint(0, 40, (2000, ))
    expected = torch.tensor([(a, b) in train for a, b in zip(u.tolist(), i.tolist())])
    assert torch.equal(pairs.is_training_pair(u, i), expected)


def test_epoch_covers_every_pair_once_in_batches():
    ei = _random_edges(seed=5)
    pairs = TrainingPairs(ei, 40)
    g = torch.Generator().manual_seed(0)
    batches = list(pairs.epoch(batch_size=32, generator=g))
    assert [b.users.numel() for b in batches[:-1]] == [32] * (len(batches) - 1)
    assert len(batches) == pairs.num_batches(32)
    users = torch.cat([b.users for b in batches])
    pos = torch.cat([b.pos for b in batches])
    got = sorted(zip(users.tolist(), pos.tolist()))
    assert got == sorted(map(tuple, ei.t().tolist()))
    # shuffled, not in file order
    assert not torch.equal(users, ei[0])


def test_same_seed_same_epochs_and_different_seed_differs():
    ei = _random_edges(seed=6)
    pairs = TrainingPairs(ei, 40)

    def two_epochs(seed):
        g = torch.Generator().manual_seed(seed)
        return [torch.cat([torch.stack(b) for b in pairs.epoch(64, g)], 1)
                for _ in range(2)]

    a, b, c = two_epochs(7), two_epochs(7), two_epochs(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # epochs differ from each other
    assert not torch.equal(a[0], c[0])


def test_user_owning_every_training_item_is_a_clear_error():
    ei = torch.tensor([[0, 0, 0, 1], [0, 1, 2, 1]])
    with pytest.raises(NegativeSamplingError, match='user 0 .*every one of the 3'):
        TrainingPairs(ei, 5)
    with pytest.raises(NegativeSamplingError, match='no training interactions'):
        TrainingPairs(torch.empty(2, 0, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r'item id 3, expected 0 <= id < 2'):
        TrainingPairs(torch.tensor([[0], [3]]), 2)


def test_duplicates_are_separate_pairs():
    ei = torch.tensor([[0, 0, 1], [1, 1, 2]])
    pairs = TrainingPairs(ei, 4)
    assert pairs.num_pairs == 3
    g = torch.Generator().manual_seed(0)
    u, p, n = pairs.sample_epoch(g)
    assert sorted(zip(u.tolist(), p.tolist())) == [(0, 1), (0, 1), (1, 2)]
    assert not pairs.is_training_pair(u, n).any()


def test_same_distribution_as_pyg_structured_negative_sampling_on_a_common_pool():
    """Where every item occurs in training, PyG's sampler and this one draw from the
    same distribution: uniform over the items the user has not interacted with."""
    from torch_geometric.utils import structured_negative_sampling
    g = np.random.default_rng(4)
    rows, cols = [], []
    for u in range(30):
        items = g.choice(20, size=int(g.integers(2, 8)), replace=False)
        rows += [u] * len(items)
        cols += items.tolist()
    cols[:20] = list(range(20))  # every item occurs in training: the pools agree
    ei = torch.tensor([rows, cols])
    pairs = TrainingPairs(ei, num_items=20)
    assert pairs.candidates.tolist() == list(range(20))
    gen = torch.Generator().manual_seed(0)
    ours, theirs = [], []
    torch.manual_seed(0)
    for _ in range(60):
        ours.append(pairs.sample_negatives(ei[0], gen))
        _, _, k = structured_negative_sampling(ei, num_nodes=20,
                                               contains_neg_self_loops=True)
        theirs.append(k)
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    users = ei[0].repeat(60)
    train = set(map(tuple, ei.t().tolist()))
    for neg in (ours, theirs):
        assert not any((u, j) in train for u, j in zip(users.tolist(), neg.tolist()))
    # the (user, item) pair counts of both samplers: one contingency table
    key = lambda neg: (users * 20 + neg).numpy()
    cells = np.union1d(key(ours), key(theirs))
    table = np.stack([np.searchsorted(cells, key(x)) for x in (ours, theirs)])
    counts = np.stack([np.bincount(t, minlength=cells.size) for t in table])
    _, p, _, _ = stats.chi2_contingency(counts)
    assert p > 0.01, p
    # the same test tells apart a sampler that never draws item 0 (the power check)
    shifted = np.where(ours.numpy() == 0, 1, ours.numpy())
    marginals = np.stack([np.bincount(theirs.numpy(), minlength=20),
                          np.bincount(shifted, minlength=20)])
    _, p_biased, _, _ = stats.chi2_contingency(marginals)
    assert p_biased < 1e-6


def test_batch_reductions_on_one_process_are_the_plain_ones():
    from mambarec_pyg.data.sampling import BPRBatch
    g = torch.Generator().manual_seed(0)
    users, pos, neg = (torch.randint(10, (7, ), generator=g) for _ in range(3))
    batch = BPRBatch(users, pos, neg, 16)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64)
    assert batch.num_global == 7 and batch.nominal_size == 16
    assert torch.equal(batch.mean(x), x.mean())
    assert torch.equal(batch.sum(x), x.sum())
    assert batch.gather(x) is x and batch.local(x) is x
    assert BPRBatch(users, pos, neg).nominal_size == 7


@pytest.mark.parametrize('world', [2, 3])
def test_batch_shards_average_to_the_global_values(world):
    """Per-process values of mean/sum, averaged over the processes, equal the
    single-process value (a plain loop over simulated shards); gather rebuilds the
    global rows and local picks each shard's rows of a global draw."""
    from mambarec_pyg.data.sampling import BatchShard, BPRBatch
    g = torch.Generator().manual_seed(1)
    n = 10  # not divisible by 3
    users, pos, neg = (torch.randint(10, (n, ), generator=g) for _ in range(3))
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    bounds = torch.tensor_split(torch.arange(n), world)
    rows = [(int(b[0]), int(b[-1]) + 1) for b in bounds]
    means, sums = [], []
    for r, (lo, hi) in enumerate(rows):
        shard = BatchShard(r, world, lo, hi, n, lambda t: x)
        b = BPRBatch(users[lo:hi], pos[lo:hi], neg[lo:hi], 12, shard)
        assert b.num_global == n and b.nominal_size == 12
        means.append(b.mean(x[lo:hi]))
        sums.append(b.sum(x[lo:hi]))
        assert torch.equal(b.local(x), x[lo:hi])
        assert torch.equal(b.gather(x[lo:hi]), x)
    expected_mean = sum(float(v) for v in x.flatten()) / x.numel()
    expected_sum = sum(float(v) for v in x.flatten())
    assert float(sum(means)) / world == pytest.approx(expected_mean, rel=1e-12)
    assert float(sum(sums)) / world == pytest.approx(expected_sum, rel=1e-12)
