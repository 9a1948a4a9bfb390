"""The kNN search backends (mambarec_pyg.data.knn): faiss exact against the exact
blocked search, recall of hnsw / ivf, the cache key, the options, and a model
trained on an approximate graph."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip('faiss')

from mambarec_pyg.config import DataConfig  # noqa: E402
from mambarec_pyg.data import load_dataset  # noqa: E402
from mambarec_pyg.data.graphs import knn_edges, knn_neighbours  # noqa: E402
from mambarec_pyg.data.knn import KNNBackend  # noqa: E402
from mambarec_pyg.data.transforms import GraphTransform, ItemKNN  # noqa: E402
from mambarec_pyg.errors import ConfigError, DataError  # noqa: E402

from support import train_through_cli  # noqa: E402


def _features(dtype, n=400, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[10] = x[20]          # duplicates: exact ties
    x[21] = x[20]
    x[30] = 0              # a zero row: similarity 0 to everything
    x[40] = 3 * x[41]      # same direction, another norm
    return x


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('weighting', ['similarity', 'binary'])
def test_faiss_matches_exact(dtype, weighting):
    x = _features(dtype)
    e_exact, w_exact = knn_edges(x, 7, weighting)
    e_faiss, w_faiss = knn_edges(x, 7, weighting, backend='faiss')
    # same neighbours (ties at the boundary recomputed by the exact rule: the lower
    # id wins); the weights agree to float32 rounding (faiss searches in float32, the
    # kept similarities are recomputed in the features' dtype by another product)
    assert torch.equal(e_exact, e_faiss)
    assert w_faiss.dtype == w_exact.dtype == torch.float64
    torch.testing.assert_close(w_faiss, w_exact, rtol=1e-6, atol=1e-7)


def test_faiss_tie_rule_is_the_exact_one():
    # four identical rows and k = 2: every one of them keeps the two lowest ids
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    x[[5, 9, 17, 33]] = x[5].clone()
    _, col, _ = knn_neighbours(x, 2, backend='faiss')
    for i in (5, 9, 17, 33):
        assert col.view(50, 2)[i].tolist() == [5, 9]


def _clustered(n=50_000, d=64, clusters=250, latent=6, seed=0):
    """Clustered features of low intrinsic dimension (items of a cluster vary along a
    few directions, like real embeddings), with an exact ground truth computed
    cluster by cluster: every item lies within angle r of its centre and centres are
    more than 4 r apart, so all of an item's nearest neighbours are in its cluster
    (the triangle inequality on angles; asserted)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    centre = torch.nn.functional.normalize(torch.randn(clusters, d, generator=g,
                                                       dtype=f64), dim=1)
    basis = torch.randn(clusters, latent, d, generator=g, dtype=f64) / math.sqrt(d)
    label = torch.arange(n) % clusters
    z = torch.randn(n, latent, generator=g, dtype=f64)
    x = centre[label] + 0.04 * torch.einsum('nl,nld->nd', z, basis[label]) + \
        0.002 * torch.randn(n, d, generator=g, dtype=f64)
    xn = torch.nn.functional.normalize(x, dim=1)
    r = torch.acos((xn * centre[label]).sum(1).clamp(max=1)).max()
    cc = centre @ centre.t()
    cc.fill_diagonal_(-1)
    assert torch.acos(cc.max()) > 4 * r
    truth = torch.empty(n, 10, dtype=torch.long)
    for j in range(clusters):
        ids = (label == j).nonzero().view(-1)
        truth[ids] = ids[(xn[ids] @ xn[ids].t()).topk(10, dim=1).indices]
    return x.float(), truth


@pytest.mark.slow
def test_approximate_recall():
    x, truth = _clustered()
    n = x.size(0)
    for backend in (KNNBackend('hnsw', hnsw_m=16, hnsw_ef_construction=40,
                               hnsw_ef_search=32),
                    KNNBackend('ivf', ivf_nlist=256, ivf_nprobe=4)):
        _, col, _ = knn_neighbours(x, 10, backend=backend)
        col = col.view(n, 10)
        recall = (col.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().mean()
        assert recall >= 0.95, (backend, float(recall))


def test_approximate_result_layout_and_weights():
    x = _features(torch.float32, n=300)
    for name in ('hnsw', 'ivf'):
        row, col, sim = knn_neighbours(x, 5, backend=name)
        assert torch.equal(row, torch.arange(300).repeat_interleave(5))
        c = col.view(300, 5)
        assert torch.equal(c, c.sort(dim=1).values)
        # the kept similarities are the cosines of the pairs, whatever found them
        xn = x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)
        torch.testing.assert_close(sim, (xn[row] * xn[col]).sum(1), rtol=1e-5,
                                   atol=1e-6)


def test_backend_options_are_checked():
    with pytest.raises(ConfigError, match='data.knn_backend'):
        DataConfig(synthetic='tiny', knn_backend='annoy')
    with pytest.raises(ConfigError, match='data.knn_hnsw_m'):
        DataConfig(synthetic='tiny', knn_hnsw_m=0)
    with pytest.raises(DataError, match='shrink'):
        knn_neighbours(torch.randn(20, 4), 3, shrink=1.0, backend='faiss')


def test_cache_key_includes_backend():
    data = load_dataset(DataConfig(synthetic='tiny'))
    assert not hasattr(data, 'knn_backend')
    knn = ItemKNN(5, 'binary')
    exact = knn.cache_key(data)
    # exact: the key of before the backends (old caches stay valid)
    assert exact == GraphTransform.cache_key(knn, data)
    keys = {exact, ItemKNN(5, 'binary', backend='faiss').cache_key(data),
            ItemKNN(5, 'binary', backend='hnsw').cache_key(data),
            ItemKNN(5, 'binary', backend=KNNBackend('hnsw', hnsw_ef_search=64)
                    ).cache_key(data),
            ItemKNN(5, 'binary', backend='ivf').cache_key(data)}
    assert len(keys) == 5
    approx = load_dataset(DataConfig(synthetic='tiny', knn_backend='ivf',
                                     knn_ivf_nprobe=3))
    assert approx.knn_backend == KNNBackend('ivf', ivf_nprobe=3)
    assert knn.cache_key(approx) == \
        ItemKNN(5, 'binary', backend=KNNBackend('ivf', ivf_nprobe=3)).cache_key(data)


def test_model_trains_on_an_approximate_graph(tmp_path):
    results = train_through_cli(tmp_path, 'freedom', '--data.knn-backend', 'hnsw',
                                '--train.max-epochs', '2', '--train.batch-size', '256')
    assert math.isfinite(results['test']['recall@20'])
    assert results['test']['recall@20'] > 0
    assert 'knn_backend: hnsw' in (tmp_path / 'freedom' / 'config.yaml').read_text()


@pytest.mark.parametrize('name', ['hnsw', 'ivf'])
def test_approximate_graphs_are_reproducible(name):
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(2))
    first = knn_edges(x, 5, backend=name)
    second = knn_edges(x, 5, backend=name)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
