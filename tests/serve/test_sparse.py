"""Score function ``'sparse_dot'`` (content-based item kNN): the index against plain
loops, the export of ``itemknncbf`` against a numpy computation from the data, its
damaged files, and every endpoint of the service for it (unknown users, ``k`` over
the candidates, an empty training row, /similar from the weights' rows)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_support import require
from support import MF, itemknn_weights

from mambarec_pyg.models import ItemKNNCBF, ItemKNNCBFConfig
from mambarec_pyg.serve.export import (ExportError, export_model, load_export,
                                       resolve_export, sparse_dot_scores,
                                       write_export)
from mambarec_pyg.serve.index import SparseDotIndex, gather_rows

UI = ('user', 'interacts', 'item')


def random_csr(rng, rows, cols, density=0.3, empty=()):
    """A random CSR matrix ``(rowptr, items, values)`` with the rows ``empty``
    empty, items sorted per row; and the same as a dense array."""
    dense = np.where(rng.random((rows, cols)) < density,
                     rng.normal(size=(rows, cols)), 0.0)
    dense[list(empty)] = 0.0
    rowptr, items, values = [0], [], []
    for r in range(rows):
        nz = np.flatnonzero(dense[r])
        items.extend(nz.tolist())
        values.extend(dense[r, nz].tolist())
        rowptr.append(len(items))
    return (np.asarray(rowptr, np.int64), np.asarray(items, np.int64),
            np.asarray(values, np.float32)), dense.astype(np.float32)


def plain_sparse_ranking(dense_w, seen, k, exclude=True):
    """A user's top-k by sum over the user's items of the rows of ``dense_w``, a
    Python sort (ties by item id)."""
    N = dense_w.shape[0]
    scores = [sum(float(dense_w[i, j]) for i in seen) for j in range(N)]
    pairs = sorted((-s, j) for j, s in enumerate(scores)
                   if not (exclude and j in set(seen)))
    return [j for _, j in pairs[:k]], [-s for s, _ in pairs[:k]]


# ---------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------
def test_gather_rows_equals_a_loop():
    rowptr = np.array([0, 2, 2, 5, 6])
    positions, owner = gather_rows(rowptr, np.array([2, 1, 0, 2, 3]))
    want = [(p, n) for n, r in enumerate([2, 1, 0, 2, 3])
            for p in range(rowptr[r], rowptr[r + 1])]
    assert list(zip(positions.tolist(), owner.tolist())) == want


@pytest.mark.parametrize('block_elements', [1, 1 << 22])
def test_sparse_index_equals_a_plain_loop(block_elements):
    rng = np.random.default_rng(3)
    N = 12
    (rowptr, items, values), dense = random_csr(rng, N, N, empty=(4, ))
    index = SparseDotIndex(rowptr, items, values, block_elements)
    queries = [np.array([0, 3, 7]), np.array([], np.int64), np.array([4]),
               np.array([1, 2, 5, 6, 8, 9, 10, 11])]
    for k in (1, 5, N, 3 * N):  # 3 N: more than any query's candidates
        for exclude in (True, False):
            found = index.search(queries, k, queries if exclude else None)
            for q, (got_items, got_scores) in zip(queries, found):
                want_items, want_scores = plain_sparse_ranking(dense, q.tolist(), k,
                                                               exclude)
                assert got_items.tolist() == want_items
                np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5,
                                           atol=1e-6)
    # scores of every item, against the dense product
    np.testing.assert_allclose(index.scores(queries),
                               np.stack([dense[q].sum(axis=0) for q in queries]),
                               rtol=1e-6, atol=1e-6)


def test_sparse_neighbours_are_the_row_by_weight():
    rng = np.random.default_rng(4)
    (rowptr, items, values), dense = random_csr(rng, 9, 9, density=0.5, empty=(2, ))
    index = SparseDotIndex(rowptr, items, values)
    for i in range(9):
        row = [(-float(dense[i, j]), j) for j in np.flatnonzero(dense[i]) if j != i]
        for k in (1, 3, 20):
            got_items, got_scores = index.neighbours(i, k)
            want = sorted(row)[:k]
            assert got_items.tolist() == [j for _, j in want]
            np.testing.assert_allclose(got_scores, [-s for s, _ in want], rtol=1e-6)
    assert index.neighbours(2, 5)[0].size == 0  # an empty row: nothing similar


def test_sparse_dot_scores_plain_loop():
    rng = np.random.default_rng(5)
    (rowptr, items, values), dense = random_csr(rng, 6, 6)
    seen_rowptr, seen_items = np.array([0, 2, 2, 5]), np.array([0, 4, 1, 2, 5])
    users, pairs = np.array([0, 1, 2, 0]), np.array([3, 0, 5, 4])
    want = [dense[[0, 4]][:, 3].sum(), 0.0, dense[[1, 2, 5]][:, 5].sum(),
            dense[[0, 4]][:, 4].sum()]
    np.testing.assert_allclose(sparse_dot_scores(rowptr, items, values, seen_rowptr,
                                                 seen_items, users, pairs), want,
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------
# The export of itemknncbf
# ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def knn_export(tiny_data, tmp_path_factory):
    model = ItemKNNCBF(tiny_data, ItemKNNCBFConfig())
    out = tmp_path_factory.mktemp('knn') / 'exp'
    export_model(model, tiny_data, out, config={'note': 'knn'})
    return out


def test_itemknncbf_export_holds_the_weights(knn_export, tiny_data):
    e = load_export(knn_export)
    m = e.manifest
    assert m['score_function'] == 'sparse_dot' and m['embedding_dim'] is None
    assert m['model']['name'] == 'itemknncbf' and e.dim is None
    assert set(m['files']) == {'similarity_rowptr.npy', 'similarity_items.npy',
                               'similarity_values.npy', 'seen_rowptr.npy',
                               'seen_items.npy', 'item_popularity.npy'}
    assert e.user_embeddings is None and e.item_embeddings is None
    U, N = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    assert (e.num_users, e.num_items) == (U, N)
    W = itemknn_weights(tiny_data)
    got = np.zeros((N, N))
    for i in range(N):
        row = slice(e.similarity_rowptr[i], e.similarity_rowptr[i + 1])
        assert (np.diff(e.similarity_items[row]) > 0).all()
        got[i, e.similarity_items[row]] = e.similarity_values[row]
    np.testing.assert_allclose(got, W, rtol=1e-5, atol=1e-6)
    assert m['similarity'] == {'num_weights': int(np.count_nonzero(W)),
                               'max_per_item': 10}
    # training rows from the edge list
    edges = tiny_data[UI].edge_index.t().tolist()
    for u in range(U):
        assert e.seen(u).tolist() == sorted({i for uu, i in edges if uu == u})
    for a in (e.similarity_rowptr, e.similarity_items, e.similarity_values):
        assert not a.flags.writeable


@pytest.mark.parametrize('file, payload, match', [
    ('similarity_items.npy', lambda a: a[::-1].copy(), 'strictly increasing'),
    ('similarity_items.npy', lambda a: a + 1000, r'item ids in \[0, 60\)'),
    ('similarity_values.npy', lambda a: np.where(np.arange(a.size) == 3, np.nan, a
                                                 ).astype(np.float32),
     'entry 3 is NaN'),
    ('similarity_values.npy', lambda a: a[:-1].copy(), 'one weight per entry'),
    ('similarity_rowptr.npy', lambda a: a[:-1].copy(), 'row pointers'),
])
def test_damaged_weights_are_refused(knn_export, tmp_path, file, payload, match):
    e = load_export(knn_export)
    arrays = {'similarity_rowptr': e.similarity_rowptr,
              'similarity_items': e.similarity_items,
              'similarity_values': e.similarity_values}
    name = file[:-4]
    arrays[name] = payload(arrays[name])
    with pytest.raises(ExportError, match=match) as info:
        write_export(tmp_path / 'bad', None, None, e.seen_rowptr, e.seen_items,
                     e.item_popularity, model={'name': 'x'},
                     score_function='sparse_dot',
                     similarity=(arrays['similarity_rowptr'],
                                 arrays['similarity_items'],
                                 arrays['similarity_values']))
    assert file in str(info.value)
    assert not (tmp_path / 'bad').exists()  # nothing written


def test_arrays_must_fit_the_score_function(knn_export, tmp_path):
    e = load_export(knn_export)
    sim = (e.similarity_rowptr, e.similarity_items, e.similarity_values)
    common = (e.seen_rowptr, e.seen_items, e.item_popularity)
    emb = np.ones((e.num_users, 2), np.float32), np.ones((e.num_items, 2), np.float32)
    with pytest.raises(ExportError, match="similarity_rowptr: required by score "
                                          "function 'sparse_dot'"):
        write_export(tmp_path / 'a', None, None, *common, model={'name': 'x'},
                     score_function='sparse_dot')
    with pytest.raises(ExportError, match="similarity_rowptr: not part of an export "
                                          "of score function 'dot'"):
        write_export(tmp_path / 'b', *emb, *common, model={'name': 'x'},
                     similarity=sim)
    with pytest.raises(ExportError, match="user_embeddings: not part"):
        write_export(tmp_path / 'c', *emb, *common, model={'name': 'x'},
                     similarity=sim, score_function='sparse_dot')
    assert not any((tmp_path / n).exists() for n in 'abc')


def test_a_score_override_that_disagrees_is_refused(tiny_data, tmp_path):
    class Skewed(MF):
        name = 'skewed'

        def score(self, users, items):
            return super().score(users, items) + 1.0

    class Same(MF):
        name = 'same'

        def score(self, users, items):
            return super().score(users, items)

    torch.manual_seed(0)
    with pytest.raises(ExportError, match="'skewed' overrides Recommender.score"):
        export_model(Skewed(tiny_data), tiny_data, tmp_path / 'skewed')
    assert not (tmp_path / 'skewed' / 'current').exists()
    export_model(Same(tiny_data), tiny_data, tmp_path / 'same')
    assert load_export(tmp_path / 'same').manifest['score_function'] == 'dot'


def test_sparse_user_rows_must_be_the_training_matrix(tiny_data, tmp_path):
    model = ItemKNNCBF(tiny_data, ItemKNNCBFConfig())
    R = model.user_matrix
    model.user_matrix = torch.sparse_coo_tensor(R.indices(), 2 * R.values(),
                                                R.shape).coalesce()
    with pytest.raises(ExportError, match='not the binary training interactions'):
        export_model(model, tiny_data, tmp_path / 'x')


# ---------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def knn_client(knn_export):
    require('fastapi')
    require('httpx')
    from fastapi.testclient import TestClient

    from mambarec_pyg.serve.app import create_app
    with TestClient(create_app(knn_export, sighup=False)) as c:
        yield c


def test_recommend_equals_the_plain_ranking(knn_client, knn_export, tiny_data):
    e = load_export(knn_export)
    W = itemknn_weights(tiny_data)
    N = e.num_items
    for user in (0, 17, e.num_users - 1):
        seen = e.seen(user).tolist()
        for k in (5, N):  # N: more than the user's candidates, all of them
            r = knn_client.get(f'/recommend?user={user}&k={k}')
            assert r.status_code == 200, r.text
            got = r.json()
            assert got['known'] and got['source'] == 'model'
            items, scores = plain_sparse_ranking(W, seen, k)
            assert got['items'] == items
            np.testing.assert_allclose(got['scores'], scores, rtol=1e-5, atol=1e-6)
        assert len(got['items']) == N - len(seen)
        r = knn_client.get(f'/recommend?user={user}&k=7&exclude_seen=false').json()
        assert r['items'] == plain_sparse_ranking(W, seen, 7, exclude=False)[0]
    batch = knn_client.post('/recommend', json={'users': [3, 3, 0], 'k': 4}).json()
    assert [x['items'] for x in batch['results']] == \
        [plain_sparse_ranking(W, e.seen(u).tolist(), 4)[0] for u in (3, 3, 0)]


def test_unknown_users_get_popular_items(knn_client, knn_export):
    e = load_export(knn_export)
    pop = e.item_popularity.tolist()
    want = sorted(range(e.num_items), key=lambda i: (-pop[i], i))
    r = knn_client.get(f'/recommend?user={e.num_users}&k=5').json()
    assert not r['known'] and r['source'] == 'popularity'
    assert r['items'] == want[:5] and r['scores'] == [pop[i] for i in want[:5]]
    big = knn_client.post('/recommend', json={'users': [10**6], 'k': 500}).json()
    assert big['results'][0]['items'] == want  # k over the catalog: all items


def test_similar_is_the_weights_row(knn_client, knn_export, tiny_data):
    e = load_export(knn_export)
    W = itemknn_weights(tiny_data)
    for item in (0, 31, e.num_items - 1):
        row = sorted((-W[item, j], j) for j in np.flatnonzero(W[item]) if j != item)
        for k in (3, 500):  # 500: more than the row holds
            r = knn_client.get(f'/similar?item={item}&k={k}')
            assert r.status_code == 200, r.text
            assert r.json()['items'] == [j for _, j in row[:k]]
            np.testing.assert_allclose(r.json()['scores'], [-s for s, _ in row[:k]],
                                       rtol=1e-5)
    meta = knn_client.get('/metadata').json()
    assert meta['serving']['index'] == 'sparse-exact'
    assert meta['manifest']['score_function'] == 'sparse_dot'
    assert knn_client.get(f'/similar?item={e.num_items}').status_code == 404
    bad = knn_client.get('/similar?item=-1')
    assert bad.status_code == 422 and bad.json()['error']['field'] == 'item'
    assert knn_client.get('/health').json()['model'] == 'itemknncbf'


def test_an_empty_training_row_and_a_faiss_option(tmp_path):
    """A user with no training items scores every item 0 (ties by item id); the
    faiss option does not apply to a sparse export, which is ranked exactly."""
    rng = np.random.default_rng(7)
    (rowptr, items, values), dense = random_csr(rng, 8, 8, density=0.4)
    seen_rowptr, seen_items = np.array([0, 2, 2, 3]), np.array([1, 6, 3])
    write_export(tmp_path / 'exp', None, None, seen_rowptr, seen_items,
                 np.array([0, 1, 0, 1, 0, 0, 1, 0]), model={'name': 'hand'},
                 score_function='sparse_dot', similarity=(rowptr, items, values))
    from mambarec_pyg.serve.config import ServeConfig
    from mambarec_pyg.serve.service import Service
    for index in ('exact', 'faiss-flat'):
        if index != 'exact':
            pytest.importorskip('faiss')
        service = Service(tmp_path / 'exp', ServeConfig(index=index))
        empty = service.recommend_query([('user', '1'), ('k', '4')])
        assert empty['known'] and empty['items'] == [0, 1, 2, 3]
        assert empty['scores'] == [0.0] * 4
        for user in (0, 2):
            got = service.recommend_query([('user', str(user)), ('k', '8')])
            seen = seen_items[seen_rowptr[user]:seen_rowptr[user + 1]].tolist()
            assert got['items'] == plain_sparse_ranking(dense, seen, 8)[0]
        assert service.metadata()['serving']['index'] == 'sparse-exact'
    assert resolve_export(tmp_path / 'exp').parent.name == 'versions'


def test_reload_between_score_functions(knn_export, tmp_path):
    """One export directory republished with a dense model, then the kNN one, then
    the dense one again: each reload answers with the new score function."""
    from mambarec_pyg.serve.service import Service
    e = load_export(knn_export)
    rng = np.random.default_rng(8)
    user = rng.normal(size=(e.num_users, 4)).astype(np.float32)
    item = rng.normal(size=(e.num_items, 4)).astype(np.float32)
    common = (e.seen_rowptr, e.seen_items, e.item_popularity)
    sim = (e.similarity_rowptr, e.similarity_items, e.similarity_values)
    out = tmp_path / 'exp'
    write_export(out, user, item, *common, model={'name': 'dense'})
    service = Service(out)

    def dense_top(u, k):
        s = item.astype(np.float64) @ user[u].astype(np.float64)
        s[e.seen(u)] = -np.inf
        return sorted(range(e.num_items), key=lambda i: (-s[i], i))[:k]

    def sparse_top(u, k):
        return SparseDotIndex(*sim).search([e.seen(u)], k, [e.seen(u)])[0][0].tolist()

    assert dense_top(5, 6) != sparse_top(5, 6)
    for kind in ('sparse', 'dense', 'sparse'):
        if kind == 'sparse':
            write_export(out, None, None, *common, model={'name': 'knn'},
                         score_function='sparse_dot', similarity=sim, overwrite=True)
        else:
            write_export(out, user, item, *common, model={'name': 'dense'},
                         overwrite=True)
        assert service.reload()['reloaded']
        got = service.recommend_query([('user', '5'), ('k', '6')])['items']
        assert got == (sparse_top(5, 6) if kind == 'sparse' else dense_top(5, 6))


def test_real_server_for_a_sparse_export(knn_export):
    """``python -m mambarec_pyg.serve`` (no torch) on the kNN export, over HTTP:
    every endpoint answers as the in-process service does."""
    httpx = require('httpx')
    require('uvicorn')
    from mambarec_pyg.serve.loadgen import LocalServer, run_load
    from mambarec_pyg.serve.service import Service
    local = Service(knn_export)
    with LocalServer(knn_export, ['--log-level', 'warning'], lean=True) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get('/health').json()['model'] == 'itemknncbf'
        assert c.get('/metadata').json()['manifest'] == local.snapshot.export.manifest
        for user in (0, 99, 100):
            got = c.get(f'/recommend?user={user}&k=8').json()
            want = local.recommend_query([('user', str(user)), ('k', '8')])
            assert got['items'] == want['items'] and got['known'] == (user < 100)
            np.testing.assert_allclose(got['scores'], want['scores'], rtol=1e-6)
        body = {'users': [4, 100, 4], 'k': 3, 'exclude_seen': False}
        got = c.post('/recommend', json=body).json()
        import json
        want = local.recommend_batch(json.dumps(body).encode())
        assert [r['items'] for r in got['results']] == \
            [r['items'] for r in want['results']]
        assert c.get('/similar?item=7&k=4').json()['items'] == \
            local.similar_query([('item', '7'), ('k', '4')])['items']
        bad = c.get('/recommend?user=3&k=0')
        assert bad.status_code == 422 and bad.json()['error']['field'] == 'k'
        res = run_load(server.url, lambda n: ('GET', f'/recommend?user={n % 120}',
                                              None), clients=4, requests=40)
        assert res.errors == 0, res.failures[:3]
        assert 'Traceback' not in server.log()
