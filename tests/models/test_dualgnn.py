"""DualGNN against a plain dense computation (modality networks, fusion -- the
intended one and MMRec's in-place one --, the user co-occurrence graph from a naive
loop, the base-2 BPR and the penalties, gradients), the padding of short neighbour
lists (MMRec's urn, redrawn per epoch, training only), and it learns."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, default_dtype, feature_variants,
                     naive_user_graph, naive_user_neighbours,
                     numpy_normalized_adjacency, plain_cooccurrence_loss,
                     plain_modality_representations, random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.models import DualGNN, DualGNNConfig
from mambarec_pyg.nn.user_graph import neighbour_table, pad_neighbours


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, cls=DualGNN, config_cls=DualGNNConfig, **kwargs):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return cls(data, config_cls(**kwargs))


def _plain(model, data, mmrec=False):
    U = model.num_users
    reps = plain_modality_representations(model, data, numpy_normalized_adjacency(data))
    item = sum(r[U:] for r in reps)
    if len(reps) == 1:
        user = reps[0][:U]
    else:
        users = [r[:U] for r in reps]
        if mmrec:
            users[0] = sum(users)
        user = sum(model.user_weight[:, m:m + 1] * r for m, r in enumerate(users))
    W = naive_user_graph(naive_user_neighbours(data, model.config.user_knn_k), U)
    return user + W @ user, item


def test_config_is_checked():
    with pytest.raises(ConfigError, match='model.user_knn_k'):
        DualGNNConfig(user_knn_k=0)
    with pytest.raises(ConfigError, match='model.mmrec_user_fusion'):
        DualGNNConfig(mmrec_user_fusion='yes')
    assert DualGNNConfig.GRID == {'model.reg_weight': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
                                  'train.lr': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]}


def test_modality_weights_start_as_a_softmax(tiny_data):
    model = _build(tiny_data)
    w = model.user_weight.detach()
    torch.testing.assert_close(w.sum(1), torch.ones(model.num_users,
                                                    dtype=torch.float64))
    assert bool((w > 0.3).all() and (w < 0.7).all())


@pytest.mark.parametrize('variant, mmrec', [('image+text', False),
                                            ('image+text', True),
                                            ('text', False),
                                            ('image+text+audio', False),
                                            ('image+text+audio', True)])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant, mmrec):
    data = variants[variant]
    model = _build(data, reg_weight=0.1, user_knn_k=15, mmrec_user_fusion=mmrec).eval()
    user, item = model.embed()
    pu, pi = _plain(model, data, mmrec)
    torch.testing.assert_close(user, pu, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(item, pi, rtol=1e-9, atol=1e-11)

    batch = random_batch(data, 48, seed=1)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    parts['total'].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.grad is not None}
    model.zero_grad()
    bpr, reg = plain_cooccurrence_loss(model, pu, pi, batch, 0.1)
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    (bpr + reg).backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name not in grads), name
        if p.grad is not None:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-8, atol=1e-11,
                                       msg=name)


def test_mmrec_fusion_differs_from_the_intended_one(tiny_data):
    a = _build(tiny_data).eval()
    b = _build(tiny_data, mmrec_user_fusion=True).eval()
    assert torch.equal(a.embed()[1], b.embed()[1])  # items: the same sum
    assert not torch.allclose(a.embed()[0], b.embed()[0])


def _urn_counts(draws: int, n: int, k: int, seed: int = 0):
    """Multiplicities of neighbour 0 after padding a list of n to k: ``draws`` users
    with the same list, padded in one call."""
    index = torch.tensor([list(range(n)) + [-1] * (k - n)]).repeat(draws, 1)
    count = torch.tensor([[3.0] * n + [0.0] * (k - n)],
                         dtype=torch.float64).repeat(draws, 1)
    length = torch.full((draws, ), n)
    idx, cnt = pad_neighbours(index, count, length, torch.Generator().manual_seed(seed))
    assert torch.equal(idx[:, :n], index[:, :n]) and bool((idx >= 0).all())
    assert bool((idx < n).all()) and torch.equal(cnt, torch.full_like(cnt, 3.0))
    return np.bincount((idx == 0).sum(1).numpy(), minlength=k + 1)


def test_padding_is_mmrecs_urn():
    """Two neighbours padded to four: MMRec repeats an entry of the growing list, so
    neighbour 0 ends with 1, 2 or 3 copies with probability 1/3 each (a draw from
    the original entries only would give 1/4, 1/2, 1/4)."""
    n = 3000
    freq = _urn_counts(n, 2, 4)[1:4] / n
    se = (1 / 3 * 2 / 3 / n) ** 0.5
    assert np.all(np.abs(freq - 1 / 3) < 4.5 * se), freq


def test_padding_leaves_full_and_empty_lists_alone():
    index = torch.tensor([[1, 2, 3], [-1, -1, -1], [0, -1, -1]])
    count = torch.tensor([[2.0, 1.0, 1.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]],
                         dtype=torch.float64)
    length = torch.tensor([3, 0, 1])
    idx, cnt = pad_neighbours(index, count, length, torch.Generator().manual_seed(0))
    assert idx.tolist() == [[1, 2, 3], [-1, -1, -1], [0, 0, 0]]
    assert cnt[2].tolist() == [5.0, 5.0, 5.0] and torch.equal(cnt[:2], count[:2])


def test_training_pads_per_epoch_and_eval_does_not(tiny_data):
    k = 40
    model = _build(tiny_data, user_knn_k=k).train()
    lists = naive_user_neighbours(tiny_data, k)
    lengths = [len(v) for v in lists.values()]
    assert min(lengths) < k == max(lengths)  # tiny has short and full lists
    U = model.num_users
    eval_graph = naive_user_graph(lists, U)
    torch.testing.assert_close(model.graphs['user_graph'].to_dense(), eval_graph)

    torch.manual_seed(4)
    seed = int(torch.randint(0, 2**62, (1, )).item())
    torch.manual_seed(4)
    model.on_epoch_start(0)
    index, count, length = neighbour_table(
        model.neighbour_index.new_tensor(
            [[v, u] for u in range(U) for v, _ in lists[u]]).t(),
        torch.tensor([c for u in range(U) for _, c in lists[u]], dtype=torch.float64),
        U, k)
    padded, counts = pad_neighbours(index, count, length,
                                    torch.Generator().manual_seed(seed))
    padded_lists = {u: [(v, c) for v, c in zip(padded[u].tolist(), counts[u].tolist())
                        if v >= 0] for u in range(U)}
    assert all(len(padded_lists[u]) == k for u in range(U) if lists[u])
    want = naive_user_graph(padded_lists, U)
    torch.testing.assert_close(model.graphs['user_graph_padded'].to_dense(), want)
    assert not torch.allclose(want, eval_graph)

    reps = plain_modality_representations(model, tiny_data,
                                          numpy_normalized_adjacency(tiny_data))
    user = sum(model.user_weight[:, m:m + 1] * r[:U] for m, r in enumerate(reps))
    torch.testing.assert_close(model.embed()[0], user + want @ user)  # training
    torch.testing.assert_close(model.eval_embeddings()[0],
                               (user + eval_graph @ user).detach())  # eval


def test_no_padding_when_switched_off(tiny_data):
    model = _build(tiny_data, pad_user_neighbours=False).train()
    state = torch.get_rng_state()
    model.on_epoch_start(0)
    assert 'user_graph_padded' not in model.graphs
    assert torch.equal(state, torch.get_rng_state())
    for a, b in zip(model.embed(), model.eval_embeddings()):
        torch.testing.assert_close(a, b)


def test_log2_bpr_is_the_natural_bpr_over_ln2(tiny_data):
    model = _build(tiny_data, reg_weight=0.0).eval()
    batch = random_batch(tiny_data, 16, seed=3)
    u, i, j = batch
    user, item = model.embed()
    natural = -F.logsigmoid((user[u] * item[i]).sum(1) - (user[u] * item[j]).sum(1))
    torch.testing.assert_close(model.loss(batch)['bpr'], natural.mean() / math.log(2))


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'dualgnn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '4')
    assert_beats_popularity(results, tiny_data)
