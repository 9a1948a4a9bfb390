"""GRCN against a plain dense computation of MMRec's formulas, its attention and
refined propagation against loops, the fused kernels against PyG's gather-scatter
(values and gradients), MMRec's routing, and it learns."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import softmax

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli)

from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models.grcn import (GRCN, EdgePattern, GRCNAttention, GRCNConfig,
                                      RefinedPropagation, edge_dot, edge_spmm,
                                      row_softmax)
from mambarec_pyg.nn.functional import normalize_rows as l2_normalize

UI = ('user', 'interacts', 'item')


def _build(data, **kwargs) -> GRCN:
    with default_dtype(torch.float64):
        return GRCN(data, GRCNConfig(**kwargs))


def _batch(data) -> BPRBatch:
    return random_batch(data, 40, seed=1)


def _normalize(x):
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _masked_softmax(scores, mask):
    """Row softmax over the entries where ``mask`` is 1 (0 elsewhere)."""
    scores = scores.masked_fill(mask == 0, float('-inf'))
    out = torch.softmax(scores, dim=1)
    return torch.nan_to_num(out, nan=0.0)  # rows without neighbours


def _plain_representation(model, data, user_routing):
    """MMRec's GRCN.forward with dense matrices (R: users x items)."""
    U, N = data['user'].num_nodes, data['item'].num_nodes
    R = torch.zeros(U, N, dtype=torch.float64)
    R[data[UI].edge_index[0], data[UI].edge_index[1]] = 1.0
    C = model.confidence.detach()
    reps_u, reps_i, alpha_u, alpha_i = [], [], [], []
    for m in data.modalities:
        enc = model.encoders[m]
        z = data['item'][m].double() @ enc.mlp.weight.detach().t() + \
            enc.mlp.bias.detach()
        f = _normalize(torch.where(z > 0, z, 0.01 * z))
        p = _normalize(enc.preference.detach())
        for _ in range(model.config.n_layers if user_routing else 0):
            p = _normalize(p + _masked_softmax(p @ f.t(), R) @ f)
        a_u = _masked_softmax(p @ f.t(), R)        # [U, N]: items -> users
        a_i = _masked_softmax(f @ p.t(), R.t())    # [N, U]: users -> items
        reps_u.append(p + a_u @ f)
        reps_i.append(f + a_i @ p)
        alpha_u.append(a_u)
        alpha_i.append(a_i)
    # refined weights: confidence of the source node, max over modalities, ReLU
    W_u = torch.relu(torch.stack([a * C[U:, k][None, :] for k, a in
                                  enumerate(alpha_u)]).max(0).values) * R
    W_i = torch.relu(torch.stack([a * C[:U, k][None, :] for k, a in
                                  enumerate(alpha_i)]).max(0).values) * R.t()
    E0 = _normalize(model.id_embedding.detach())
    E1_u, E1_i = W_u @ E0[U:], W_i @ E0[:U]
    E2_u, E2_i = W_u @ E1_i, W_i @ E1_u
    user = torch.cat([E0[:U] + E1_u + E2_u, *reps_u], dim=1)
    item = torch.cat([E0[U:] + E1_i + E2_i, *reps_i], dim=1)
    return user, item


@pytest.mark.parametrize('propagation', ['sparse', 'edges'])
@pytest.mark.parametrize('user_routing', [True, False])
def test_forward_and_loss_match_a_plain_computation(tiny_data, propagation,
                                                    user_routing):
    torch.manual_seed(0)
    model = _build(tiny_data, reg_weight=0.3, latent_embedding=16,
                   user_routing=user_routing, propagation=propagation)
    user_ref, item_ref = _plain_representation(model, tiny_data, user_routing)
    assert user_ref.shape == (100, 64 + 2 * 16)
    user, item = model.embed()
    torch.testing.assert_close(user, user_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, item_ref, rtol=1e-10, atol=1e-12)

    U = model.num_users
    batch = _batch(tiny_data)
    users, pos, neg = batch
    rep = torch.cat([user_ref, item_ref])
    # MMRec's calculate_loss, literally
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((pos + U, neg + U)).t().contiguous().view(-1)
    score = (rep[user_tensor] * rep[item_tensor]).sum(1).view(-1, 2)
    bpr = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]],
                                                         dtype=torch.float64))).mean()
    E = model.id_embedding.detach()
    P_v = model.encoders['image'].preference.detach()
    P_t = model.encoders['text'].preference.detach()
    reg_embedding = (E[user_tensor] ** 2 + E[item_tensor] ** 2).mean() + \
        (P_v ** 2).mean()
    reg_content = (P_v[user_tensor] ** 2).mean() + (P_t[user_tensor] ** 2).mean()
    reg = 0.3 * (reg_embedding + reg_content)
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    torch.testing.assert_close(parts['bpr'], bpr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts['reg'], reg, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(parts['total'], bpr + reg, rtol=1e-10, atol=1e-12)


def _bipartite(num_src, num_dst, num_edges, seed):
    """Distinct random edges (sources, targets) in random order; the last target
    has none."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_src * (num_dst - 1), generator=g)[:num_edges]
    return torch.stack([keys % num_src, keys // num_src])


@pytest.mark.parametrize('num_src,num_dst', [(6, 9), (9, 6)])
def test_attention_matches_a_loop_on_both_paths(num_src, num_dst):
    edge_index = _bipartite(num_src, num_dst, 25, seed=num_src)
    g = torch.Generator().manual_seed(0)
    x_src = torch.randn(num_src, 4, dtype=torch.float64, generator=g)
    x_dst = torch.randn(num_dst, 4, dtype=torch.float64, generator=g)
    expected = torch.zeros(num_dst, 4, dtype=torch.float64)
    expected_alpha = {}
    for t in range(num_dst):
        sources = edge_index[0, edge_index[1] == t].tolist()
        if not sources:
            continue
        scores = torch.stack([x_dst[t] @ x_src[s] for s in sources])
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        for s, w in zip(sources, weights):
            expected[t] += w * x_src[s]
            expected_alpha[(s, t)] = w
    conv = GRCNAttention()
    pattern = EdgePattern(edge_index[1], edge_index[0], (num_dst, num_src)).double()
    for name, (out, alpha), edges in (
            ('edges', conv((x_src, x_dst), edge_index, size=(num_src, num_dst)),
             edge_index),
            ('pattern', conv((x_src, x_dst), pattern), pattern.edge_index)):
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14, msg=name)
        got = {(s, t): a for (s, t), a in zip(edges.t().tolist(), alpha)}
        assert got.keys() == expected_alpha.keys(), name
        for key, a in got.items():
            torch.testing.assert_close(a, expected_alpha[key], rtol=1e-12,
                                       atol=1e-14, msg=name)


def test_refined_propagation_matches_a_loop_on_both_paths():
    edge_index = _bipartite(7, 5, 20, seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=g)
    pattern = EdgePattern(edge_index[1], edge_index[0], (5, 7)).double()
    weight = torch.randn(pattern.num_edges, dtype=torch.float64, generator=g)
    expected = torch.zeros(5, 3, dtype=torch.float64)
    for (s, t), w in zip(pattern.edge_index.t().tolist(), weight):
        expected[t] += w * x[s]
    conv = RefinedPropagation()
    out_edges = conv(x, pattern.edge_index, weight, size=(7, 5))
    out_pattern = conv(x, pattern, weight)
    torch.testing.assert_close(out_edges, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out_pattern, expected, rtol=1e-12, atol=1e-14)


def test_fused_kernels_have_exact_gradients():
    edge_index = _bipartite(6, 8, 22, seed=4)
    pattern = EdgePattern(edge_index[1], edge_index[0], (8, 6)).double()
    g = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g,
                           requires_grad=True)

    x_dst, x_src, values = leaf(8, 3), leaf(6, 3), leaf(pattern.num_edges)
    assert torch.autograd.gradcheck(lambda a, b: edge_dot(pattern, a, b),
                                    (x_dst, x_src))
    assert torch.autograd.gradcheck(lambda v, b: edge_spmm(pattern, v, b),
                                    (values, x_src))
    assert torch.autograd.gradcheck(lambda v: row_softmax(pattern, v), (values, ))


def test_row_softmax_and_normalize_match_pyg_and_torch():
    edge_index = _bipartite(6, 8, 22, seed=5)
    pattern = EdgePattern(edge_index[1], edge_index[0], (8, 6)).double()
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(pattern.num_edges, dtype=torch.float64, generator=g) * 5
    torch.testing.assert_close(row_softmax(pattern, scores),
                               softmax(scores, pattern.row, num_nodes=8),
                               rtol=1e-14, atol=1e-16)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    x[1] = 0.0        # below the 1e-12 floor: divided by the floor
    x[3] *= 1e-14
    upstream = torch.randn(5, 4, dtype=torch.float64, generator=g)
    outs = []
    for fn in (l2_normalize, torch.nn.functional.normalize):
        leaf = x.clone().requires_grad_()
        out = fn(leaf)
        (grad, ) = torch.autograd.grad((out * upstream).sum(), leaf)
        outs.append((out, grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-14, atol=1e-16)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(l2_normalize, (torch.randn(
        5, 4, dtype=torch.float64, generator=g, requires_grad=True), ))


def test_sparse_and_edge_kernels_agree_with_gradients(tiny_data):
    models = []
    for propagation in ('sparse', 'edges'):
        torch.manual_seed(0)
        model = _build(tiny_data, propagation=propagation, reg_weight=0.1)
        model.loss(_batch(tiny_data))['total'].backward()
        models.append(model)
    sparse, edges = models
    for a, b in zip(sparse.embed(), edges.embed()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    grads = dict(edges.named_parameters())
    for name, p in sparse.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-10, atol=1e-13,
                                   msg=name)


@torch.no_grad()
def test_mmrec_routing_sends_nothing_to_users(tiny_data):
    """MMRec's routing (one-directional [user, item + U] edges, PyG's default
    flow) leaves the users' messages at zero, so its preferences stay
    normalize(P): what user_routing=False computes. The paper's routing changes
    them."""
    torch.manual_seed(0)
    mmrec = _build(tiny_data, user_routing=False)
    paper = _build(tiny_data, user_routing=True)
    paper.load_state_dict(mmrec.state_dict())
    U = mmrec.num_users
    enc = mmrec.encoders['text']
    f = torch.nn.functional.normalize(torch.nn.functional.leaky_relu(
        enc.mlp(mmrec.feature_text)))
    p = torch.nn.functional.normalize(enc.preference)
    uni = torch.stack([tiny_data[UI].edge_index[0], tiny_data[UI].edge_index[1] + U])
    out, _ = GRCNAttention()(torch.cat([p, f]), uni)
    assert torch.count_nonzero(out[:U]) == 0 and torch.count_nonzero(out[U:]) > 0
    d, c = mmrec.config.embedding_size, mmrec.config.latent_embedding
    text = slice(d + c, d + 2 * c)  # columns of the text content representation
    user_mmrec, _ = mmrec.embed()
    user_paper, _ = paper.embed()
    # the final step's input for users is normalize(P) in MMRec's computation
    routed, _ = GRCNAttention()((f, p), paper.to_users)
    torch.testing.assert_close(user_mmrec[:, text], p + routed)
    assert (user_mmrec[:, text] - user_paper[:, text]).abs().max() > 1e-3


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'grcn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '12')
    assert_beats_popularity(results, tiny_data)
