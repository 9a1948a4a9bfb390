"""PGL against plain computations: the global principal graph against numpy's dense
SVD, the forward pass (dense adjacency powers) on the full graph in eval mode and on
the principal subgraph in training mode, the BPR and dropout-InfoNCE terms and their
gradients; and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from support import (assert_beats_popularity, assert_grads_match, build_float64,
                     feature_variants, loss_and_grads, numpy_normalized_adjacency,
                     random_batch, train_through_cli)

from mambarec_pyg.config import ConfigError
from mambarec_pyg.data.errors import DataError
from mambarec_pyg.data.graphs import principal_graph_edges, sparse_from_edges
from mambarec_pyg.data.transforms import PrincipalGraph
from mambarec_pyg.models import PGL, PGLConfig
from mambarec_pyg.models import pgl as pgl_module
from mambarec_pyg.models.pgl import DATASET_DEFAULTS

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> PGL:
    return build_float64(PGL, data, **kwargs)


def _numpy_principal(data, rank, threshold=1e-3) -> np.ndarray:
    """PGL's global_subgraph_extraction with numpy's dense SVD."""
    u, s, vt = np.linalg.svd(numpy_normalized_adjacency(data).numpy())
    n = rank // 4
    P = u[:, :n] @ np.diag(s[:n] * s[rank - n:rank]) @ vt[:n]
    return P * (np.abs(P) >= threshold)


@pytest.mark.parametrize('rank', [16, 64])
def test_principal_graph_matches_numpy_svd(tiny_data, rank):
    want = _numpy_principal(tiny_data, rank)
    t = PrincipalGraph(rank)
    data = t(tiny_data)
    got = t.adjacency(data, torch.float64).to_dense().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    assert (got != 0).sum() == (want != 0).sum() > 0
    U = tiny_data['user'].num_nodes
    assert data['user', f'principal{rank}', 'item'].edge_index[0].max() < U


def test_principal_graph_dense_path_on_a_small_graph():
    data = HeteroData()
    data['user'].num_nodes, data['item'].num_nodes = 4, 3
    data[UI].edge_index = torch.tensor([[0, 0, 1, 2, 2, 3], [0, 1, 1, 1, 2, 2]])
    ei, w = principal_graph_edges(data[UI].edge_index, 4, 3, rank=7, threshold=0.0)
    got = sparse_from_edges(ei, w, (7, 7), layout='csr').to_dense().numpy()
    np.testing.assert_allclose(got, _numpy_principal(data, 7, threshold=0.0),
                               atol=1e-12)
    with pytest.raises(DataError, match='rank'):
        principal_graph_edges(data[UI].edge_index, 4, 3, rank=8)


def _plain(model, data, G):
    """PGL's forward with dense matrices (the item graph as built: FREEDOM's mixed
    graph, checked in test_freedom.py)."""
    c = model.config
    U = model.num_users
    items = torch.cat([F.normalize(model.features[m] @ model.projections[m].weight.t()
                                   + model.projections[m].bias, dim=1)
                       for m in model.modalities], dim=1)
    users = torch.cat([model.user_embeddings[m].weight for m in model.modalities], 1)
    S = model.graphs['item_graph'].to_dense()
    h = items
    for _ in range(c.n_mm_layers):
        h = S @ h
    x = torch.cat([users, items])
    out, layer = x, x
    for _ in range(c.n_ui_layers):
        layer = G @ layer
        out = out + layer
    out = out / (c.n_ui_layers + 1)
    return out[:U], out[U:] + h


class _RecordDropout:
    """Stands in for torch.nn.functional in the PGL module: records every dropout
    call (input, output) and leaves the rest to torch."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return getattr(F, name)

    def dropout(self, x, p, training):
        y = F.dropout(x, p, training)
        self.calls.append((x, y))
        return y


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
@pytest.mark.parametrize('mode', ['local', 'global'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant, mode,
                                                               monkeypatch):
    data = variants[variant]
    model = _build(data, mode=mode, n_ui_layers=2, n_mm_layers=2, knn_k=4,
                   svd_rank=16, cl_weight=0.3, dropout=0.4)
    full = numpy_normalized_adjacency(data)
    for got, want in zip(model.eval_embeddings(), _plain(model, data, full)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    model.train()
    torch.manual_seed(2)
    model.on_epoch_start(0)
    G = model.graphs['principal'].to_dense()
    if mode == 'global':
        want = PrincipalGraph(16).adjacency(PrincipalGraph(16)(data), torch.float64)
        torch.testing.assert_close(G, want.to_dense())
    else:
        U = model.num_users
        assert (G[:U, U:] != 0).sum() == int(data[UI].edge_index.size(1) * 0.3)
    for got, want in zip(model.embed(), _plain(model, data, G)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    record = _RecordDropout()
    monkeypatch.setattr(pgl_module, 'F', record)
    batch = random_batch(data, 40, seed=3)
    parts, grads = loss_and_grads(model, batch)
    assert set(parts) == {'total', 'bpr', 'cl'}

    u, i, j = batch
    pu, pi = _plain(model, data, G)
    bpr = -F.logsigmoid((pu[u] * pi[i]).sum(1) - (pu[u] * pi[j]).sum(1)).mean()
    # four dropout draws: user rows twice, then positive item rows twice
    (x1, y1), (x2, y2), (x3, y3), (x4, y4) = record.calls
    for x in (x1, x2):
        torch.testing.assert_close(x, pu[u], rtol=1e-10, atol=1e-12)
    for x in (x3, x4):
        torch.testing.assert_close(x, pi[i], rtol=1e-10, atol=1e-12)
    for x, y in record.calls:  # inverted dropout: zero or x / (1 - p)
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] / 0.6)
        assert 0.2 < (~kept).double().mean() < 0.6

    def nce(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        logits = a @ b.t() / 0.2
        return -(logits.diag() - logits.logsumexp(1)).mean()

    # the same masks applied to the plain rows
    masks = [(y != 0).double() / 0.6 for _, y in record.calls]
    cl = (nce(pu[u] * masks[0], pu[u] * masks[1]) +
          nce(pi[i] * masks[2], pi[i] * masks[3])) / 2
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['cl'], cl)
    torch.testing.assert_close(parts['total'], bpr + 0.3 * cl)
    assert_grads_match(model, bpr + 0.3 * cl, grads)


def test_cl_weight_zero_is_mmrecs_yaml(tiny_data):
    model = _build(tiny_data, cl_weight=0.0).train()
    model.on_epoch_start(0)
    state = torch.get_rng_state()
    parts = model.loss(random_batch(tiny_data, 30))
    assert set(parts) == {'total', 'bpr'} and torch.equal(state, torch.get_rng_state())


def test_local_pruning_redraws_each_epoch_from_the_global_rng(tiny_data):
    model = _build(tiny_data).train()
    torch.manual_seed(9)
    model.on_epoch_start(0)
    a = model.graphs['principal'].to_dense()
    model.on_epoch_start(1)
    b = model.graphs['principal'].to_dense()
    torch.manual_seed(9)
    model.on_epoch_start(0)
    assert torch.equal(model.graphs['principal'].to_dense(), a)
    assert not torch.equal(a, b)
    glob = _build(tiny_data, mode='global', svd_rank=16)
    assert glob.pruning is None and 'principal' in glob.graphs


def test_config_defaults_grid_and_errors():
    c = PGLConfig()
    assert (c.mode, c.keep_rate, c.cl_weight, c.dropout, c.svd_rank) == \
        ('local', 0.3, 0.05, 0.2, 64)
    assert (c.n_ui_layers, c.n_mm_layers, c.knn_k, c.mm_image_weight) == (2, 1, 10, 0.1)
    assert DATASET_DEFAULTS['baby'] == {'model.mode': 'local', 'model.cl_weight': 0.05,
                                       'model.dropout': 0.2}
    assert PGLConfig.GRID == {'model.cl_weight': [0.05, 0.1, 0.5],
                              'model.dropout': [0.05, 0.1, 0.2]}
    for key, bad in [('mode', 'both'), ('keep_rate', 0.0), ('svd_rank', 3),
                     ('dropout', 1.0), ('cl_weight', -0.1)]:
        with pytest.raises(ConfigError, match=f'model.{key}'):
            PGLConfig(**{key: bad})


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'pgl', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '10')
    assert_beats_popularity(results, tiny_data)
