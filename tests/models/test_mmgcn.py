"""MMGCN against a plain dense computation of MMRec's formulas, its graph convolution
against a loop, the sparse path against PyG's gather-scatter, MMRec's frozen ID
embeddings, and it learns."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.data import HeteroData

from support import (assert_beats_popularity, default_dtype, random_batch,
                     train_through_cli)

from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models.mmgcn import MMGCN, MMGCNConfig, MMGCNConv, mean_adjacency
from mambarec_pyg.nn.conv import transpose_sparse

UI = ('user', 'interacts', 'item')


def _build(data, **kwargs) -> MMGCN:
    with default_dtype(torch.float64):
        return MMGCN(data, MMGCNConfig(**kwargs))


def _batch(data) -> BPRBatch:
    return random_batch(data, 40, seed=1)


def _dense_mean_adjacency(data):
    """Row-normalised [[0, R], [R^T, 0]] from the distinct training pairs."""
    U, N = data['user'].num_nodes, data['item'].num_nodes
    A = torch.zeros(U + N, U + N, dtype=torch.float64)
    u, i = data[UI].edge_index
    A[u, U + i] = 1.0
    A[U + i, u] = 1.0
    deg = A.sum(1, keepdim=True)
    return torch.where(deg > 0, A / deg.clamp(min=1), A)


def _leaky(x):
    return torch.where(x > 0, x, 0.01 * x)


def _plain_representation(model, data):
    """MMRec's GCN.forward, written out with dense matrices."""
    A = _dense_mean_adjacency(data)
    E = model.id_embedding.detach()
    reps = []
    for m in data.modalities:
        enc = model.encoders[m]
        feat = data['item'][m].double()
        if enc.latent is not None:
            feat = feat @ enc.latent.weight.detach().t() + enc.latent.bias.detach()
        x = torch.cat([enc.preference.detach(), feat])
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        for conv, lin, comb in zip(enc.convs, enc.linears, enc.combines):
            h = _leaky(A @ (x @ conv.weight.detach()))
            x_hat = _leaky(x @ lin.weight.detach().t() + lin.bias.detach()) + E
            x = _leaky(torch.cat([h, x_hat], 1) @ comb.weight.detach().t() +
                       comb.bias.detach())
        reps.append(x)
    return sum(reps) / len(reps)


@pytest.mark.parametrize('propagation', ['sparse', 'edges'])
@pytest.mark.parametrize('layers,threshold', [(3, 40), (2, 1024)])
def test_forward_and_loss_match_a_plain_computation(tiny_data, propagation, layers,
                                                    threshold):
    torch.manual_seed(0)
    # threshold 40: the 64-d image table goes through a latent layer, text is raw
    model = _build(tiny_data, n_layers=layers, latent_threshold=threshold,
                   dim_latent=16, reg_weight=0.3, propagation=propagation)
    assert (model.encoders['image'].latent is not None) == (threshold < 64)
    assert model.encoders['text'].latent is None
    U = model.num_users
    rep = _plain_representation(model, tiny_data)
    user, item = model.embed()
    torch.testing.assert_close(user, rep[:U], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, rep[U:], rtol=1e-10, atol=1e-12)

    batch = _batch(tiny_data)
    users, pos, neg = batch
    # MMRec's calculate_loss, literally
    user_tensor = users.repeat_interleave(2)
    item_tensor = torch.stack((pos + U, neg + U)).t().contiguous().view(-1)
    score = (rep[user_tensor] * rep[item_tensor]).sum(1).view(-1, 2)
    bpr = -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]],
                                                         dtype=torch.float64))).mean()
    E = model.id_embedding.detach()
    reg = (E[user_tensor] ** 2 + E[item_tensor] ** 2).mean() + \
        (model.encoders['image'].preference.detach() ** 2).mean()
    parts = model.loss(batch)
    assert set(parts) == {'total', 'bpr', 'reg'}
    torch.testing.assert_close(parts['bpr'], bpr, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts['reg'], 0.3 * reg, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(parts['total'], bpr + 0.3 * reg, rtol=1e-10,
                               atol=1e-12)


def _random_edges(num_src, num_dst, num_edges, seed):
    g = torch.Generator().manual_seed(seed)
    # repeated edges included: both paths must count them like PyG's mean
    return torch.stack([torch.randint(0, num_src, (num_edges, ), generator=g),
                        torch.randint(0, num_dst - 1, (num_edges, ), generator=g)])


@pytest.mark.parametrize('num_src,num_dst', [(5, 12), (12, 5), (9, 9)])
def test_conv_matches_a_loop_on_both_paths(num_src, num_dst):
    torch.manual_seed(0)
    edge_index = _random_edges(num_src, num_dst, 30, seed=num_src)
    conv = MMGCNConv(6, 4).double()
    x = torch.randn(num_src, 6, dtype=torch.float64)
    expected = torch.zeros(num_dst, 4, dtype=torch.float64)
    for t in range(num_dst):  # the last target has no edges: a zero row
        sources = edge_index[0, edge_index[1] == t]
        if sources.numel():
            expected[t] = torch.stack([x[s] @ conv.weight for s in sources]).mean(0)
    adj = mean_adjacency(edge_index, (num_dst, num_src), torch.float64)
    plain = MMGCNConv(6, 4, fused=False).double()
    plain.load_state_dict(conv.state_dict())
    outs = {'edges': conv(x, edge_index, size=(num_src, num_dst)),
            'sparse': conv(x, adj, transpose=transpose_sparse(adj)),
            'sparse, autograd': plain(x, adj)}
    for name, out in outs.items():
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14, msg=name)


def test_conv_fused_gradients_match_gather_scatter():
    torch.manual_seed(0)
    edge_index = _random_edges(7, 11, 40, seed=3)
    adj = mean_adjacency(edge_index, (11, 7), torch.float64)
    grads = []
    for args in ({'edge_index': edge_index, 'size': (7, 11)},
                 {'edge_index': adj, 'transpose': transpose_sparse(adj)}):
        torch.manual_seed(1)
        conv = MMGCNConv(5, 3).double()
        x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
        out = conv(x, **args)
        weight = torch.randn(out.shape, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(2))
        grads.append(torch.autograd.grad((out * weight).sum(), [x, conv.weight]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_sparse_and_edge_propagation_agree_with_gradients(tiny_data):
    models = []
    for propagation in ('sparse', 'edges'):
        torch.manual_seed(0)
        model = _build(tiny_data, propagation=propagation, latent_threshold=40)
        model.loss(_batch(tiny_data))['total'].backward()
        models.append(model)
    sparse, edges = models
    for a, b in zip(sparse.embed(), edges.embed()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    grads = dict(edges.named_parameters())
    for name, p in sparse.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-10, atol=1e-13,
                                   msg=name)


def test_layer_count_and_latent_rule_default_to_mmrec():
    g = torch.Generator().manual_seed(0)
    data = HeteroData()
    data['user'].num_nodes, data['item'].num_nodes = 6, 5
    data['item'].image = torch.rand(5, 4096, generator=g)
    data['item'].text = torch.rand(5, 384, generator=g)
    data.modalities = ('image', 'text')
    data[UI].edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 0, 1]])
    model = MMGCN(data)
    image, text = model.encoders['image'], model.encoders['text']
    assert len(image.convs) == len(text.convs) == 3  # MMRec's effective 3 layers
    assert (image.latent.in_features, image.latent.out_features) == (4096, 256)
    assert text.latent is None  # the 384-d text features enter raw
    assert image.convs[0].weight.shape == (256, 256)
    assert text.convs[0].weight.shape == (384, 384)
    assert image.preference.shape == (6, 256) and text.preference.shape == (6, 384)
    assert text.combines[0].in_features == 384 + 64
    assert all(c.weight.shape == (64, 64) for c in text.convs[1:])


def test_frozen_id_embeddings_reproduce_mmrec(tiny_data):
    """train_id_embeddings=False: the ID embeddings and preferences are fixed
    tensors (saved with the model), only the layers train and the regulariser has
    no gradient; the default trains them."""
    batch = _batch(tiny_data)
    for train_ids in (True, False):
        torch.manual_seed(0)
        model = MMGCN(tiny_data, MMGCNConfig(train_id_embeddings=train_ids,
                                              reg_weight=0.1))
        tables = {'id_embedding': model.id_embedding,
                  **{f'encoders.{m}.preference': model.encoders[m].preference
                     for m in model.modalities}}
        params = dict(model.named_parameters())
        assert all((name in params) == train_ids for name in tables)
        assert set(tables) <= set(model.state_dict())
        before = {name: t.detach().clone() for name, t in tables.items()}
        layer_before = model.encoders['text'].convs[0].weight.detach().clone()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        parts = model.loss(batch)
        assert parts['reg'].requires_grad == train_ids
        parts['total'].backward()
        optimizer.step()
        for name, t in tables.items():
            assert torch.equal(t, before[name]) != train_ids, name
        assert not torch.equal(model.encoders['text'].convs[0].weight, layer_before)


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'mmgcn', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '12')
    assert_beats_popularity(results, tiny_data)
