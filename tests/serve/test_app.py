"""The HTTP app in process (FastAPI's test client): every endpoint against plain
computations, every kind of bad input, external ids, reload (in-flight requests
finish on the old export; a damaged export is refused) and the faiss indexes."""
from __future__ import annotations

import json
import sys
import threading

import numpy as np
import pytest

from serve_support import require

from mambarec_pyg.cli import main
from mambarec_pyg.serve.config import ServeConfig
from mambarec_pyg.serve.export import load_export, resolve_export, write_export
from mambarec_pyg.serve.service import Service

require('fastapi')
require('httpx')
from fastapi.testclient import TestClient  # noqa: E402

from mambarec_pyg.serve.app import create_app  # noqa: E402


@pytest.fixture(scope='module')
def export_dir(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp('app') / 'exp'
    assert main(['export', str(checkpoint('bpr')), '--output', str(out)]) == 0
    return out


@pytest.fixture(scope='module')
def client(export_dir):
    with TestClient(create_app(export_dir, ServeConfig(max_k=100, max_batch=50),
                               sighup=False)) as c:
        yield c


def plain_ranking(export, user, k, exclude=True):
    """The top-k of ``user`` by float64 inner products over a Python sort, ties by
    item id; training items left out when ``exclude``."""
    u = export.user_embeddings[user].astype(np.float64)
    seen = set(export.seen(user).tolist()) if exclude else set()
    pairs = sorted((-float(u @ e.astype(np.float64)), i)
                   for i, e in enumerate(export.item_embeddings) if i not in seen)
    return [i for _, i in pairs[:k]], [-s for s, _ in pairs[:k]]


def assert_answer(answer, items, scores):
    assert answer['items'] == items
    np.testing.assert_allclose(answer['scores'], scores, rtol=1e-5, atol=1e-6)


def test_health_and_metadata(client, export_dir):
    e = load_export(export_dir)
    h = client.get('/health').json()
    assert h['status'] == 'ok' and h['export'] == e.id and h['model'] == 'bpr'
    assert (h['num_users'], h['num_items']) == (100, 60)
    m = client.get('/metadata').json()
    assert m['manifest'] == json.loads((e.path / 'manifest.json').read_text())
    assert m['serving']['index'] == 'exact' and m['serving']['max_k'] == 100


def test_recommend_matches_a_plain_ranking(client, export_dir):
    e = load_export(export_dir)
    for user in range(0, 100, 7):
        r = client.get(f'/recommend?user={user}&k=10')
        assert r.status_code == 200
        got = r.json()
        assert got['user'] == user and got['known'] and got['source'] == 'model'
        assert got['export'] == e.id
        assert_answer(got, *plain_ranking(e, user, 10))
        # training items included on request
        got = client.get(f'/recommend?user={user}&k=10&exclude_seen=false').json()
        assert_answer(got, *plain_ranking(e, user, 10, exclude=False))
    # k beyond the candidates returns what exists: every unseen item
    got = client.get('/recommend?user=5&k=100').json()
    assert len(got['items']) == 60 - len(e.seen(5))
    assert_answer(got, *plain_ranking(e, 5, 100))


def test_unknown_users_get_most_popular(client, export_dir):
    e = load_export(export_dir)
    want = sorted(range(60), key=lambda i: (-int(e.item_popularity[i]), i))
    got = client.get('/recommend?user=100&k=7').json()
    assert got == {'user': 100, 'known': False, 'source': 'popularity',
                   'items': want[:7],
                   'scores': [float(e.item_popularity[i]) for i in want[:7]],
                   'export': e.id}
    assert client.get('/recommend?user=99999999999&k=70').json()['items'] == want


def test_batch_equals_single_requests(client):
    users = [3, 0, 3, 77, 500, 99]
    r = client.post('/recommend', json={'users': users, 'k': 5})
    assert r.status_code == 200
    batch = r.json()
    assert batch['k'] == 5 and batch['exclude_seen'] is True
    assert [x['user'] for x in batch['results']] == users
    for x in batch['results']:
        single = client.get(f"/recommend?user={x['user']}&k=5").json()
        assert x['items'] == single['items'] and x['known'] == single['known']
        np.testing.assert_allclose(x['scores'], single['scores'], rtol=1e-6)
    assert batch['results'][0] == batch['results'][2]  # a repeated user
    assert not batch['results'][4]['known']
    plain = client.post('/recommend', json={'users': [3], 'exclude_seen': False})
    assert len(plain.json()['results'][0]['items']) == 20


def test_similar_items_by_cosine(client, export_dir):
    e = load_export(export_dir)
    x = e.item_embeddings.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for item in (0, 13, 59):
        got = client.get(f'/similar?item={item}&k=6').json()
        pairs = sorted((-float(x[item] @ x[j]), j) for j in range(60) if j != item)
        assert got['item'] == item and got['export'] == e.id
        assert_answer(got, [j for _, j in pairs[:6]], [-s for s, _ in pairs[:6]])
    assert len(client.get('/similar?item=4&k=100').json()['items']) == 59


BAD = [
    # (method, path, body, status, field)
    ('GET', '/recommend?user=abc', None, 422, 'user'),
    ('GET', '/recommend?user=1.5', None, 422, 'user'),
    ('GET', '/recommend?user=-1', None, 422, 'user'),
    ('GET', '/recommend?user=', None, 422, 'user'),
    ('GET', '/recommend?user=99999999999999999999', None, 422, 'user'),
    ('GET', '/recommend', None, 422, 'user'),
    ('GET', '/recommend?user=1&user=2', None, 422, 'user'),
    ('GET', '/recommend?user=1&k=0', None, 422, 'k'),
    ('GET', '/recommend?user=1&k=-3', None, 422, 'k'),
    ('GET', '/recommend?user=1&k=101', None, 422, 'k'),
    ('GET', '/recommend?user=1&k=1000000000000000000000000', None, 422, 'k'),
    ('GET', '/recommend?user=1&k=ten', None, 422, 'k'),
    ('GET', '/recommend?user=1&exclude_seen=maybe', None, 422, 'exclude_seen'),
    ('GET', '/recommend?user=1&usr=2', None, 422, 'usr'),
    ('POST', '/recommend', b'{"users": [1, 2', 400, 'body'),
    ('POST', '/recommend', b'', 400, 'body'),
    ('POST', '/recommend', b'\xff\xfe', 400, 'body'),
    ('POST', '/recommend', b'[' * 100000, 400, 'body'),
    ('POST', '/recommend', b'[1, 2]', 422, 'body'),
    ('POST', '/recommend', b'{}', 422, 'users'),
    ('POST', '/recommend', b'{"users": []}', 422, 'users'),
    ('POST', '/recommend', b'{"users": 3}', 422, 'users'),
    ('POST', '/recommend', json.dumps({'users': list(range(51))}).encode(), 422,
     'users'),
    ('POST', '/recommend', b'{"users": [1, "x"]}', 422, 'users[1]'),
    ('POST', '/recommend', b'{"users": [1, -4]}', 422, 'users[1]'),
    ('POST', '/recommend', b'{"users": [true]}', 422, 'users[0]'),
    ('POST', '/recommend', b'{"users": [2.0]}', 422, 'users[0]'),
    ('POST', '/recommend', b'{"users": [null]}', 422, 'users[0]'),
    ('POST', '/recommend', b'{"users": [1], "k": 0}', 422, 'k'),
    ('POST', '/recommend', b'{"users": [1], "k": 10000}', 422, 'k'),
    ('POST', '/recommend', b'{"users": [1], "k": "5"}', 422, 'k'),
    ('POST', '/recommend', b'{"users": [1], "exclude_seen": "no"}', 422,
     'exclude_seen'),
    ('POST', '/recommend', b'{"users": [1], "kk": 3}', 422, 'kk'),
    ('POST', '/recommend', b'{"users": [1], "k": 3, "k": 4}', 422, 'k'),
    ('POST', '/recommend', b'{"users": [' + b'1, ' * 400000 + b'1]}', 413, 'body'),
    ('GET', '/similar?item=60', None, 404, 'item'),
    ('GET', '/similar?item=x', None, 422, 'item'),
    ('GET', '/similar?item=-2', None, 422, 'item'),
    ('GET', '/similar', None, 422, 'item'),
    ('GET', '/similar?item=1&k=0', None, 422, 'k'),
    ('POST', '/reload?now=1', None, 422, 'now'),
    ('GET', '/nowhere', None, 404, None),
    ('DELETE', '/recommend', None, 405, None),
    ('GET', '/reload', None, 405, None),
]


@pytest.mark.parametrize('method, path, body, status, field', BAD,
                         ids=[f'{m} {p[:40]} {str(b)[:30]}' for m, p, b, *_ in BAD])
def test_bad_input_is_a_json_error_naming_the_field(client, method, path, body,
                                                    status, field):
    r = client.request(method, path, content=body)
    assert r.status_code == status, r.text
    error = r.json()['error']
    assert error['field'] == field and error['status'] == status
    assert error['message'] and 'Traceback' not in r.text
    assert client.get('/health').status_code == 200


def test_external_ids(checkpoint, tmp_path):
    e = load_export(resolve_export(_export(checkpoint, tmp_path / 'plain')))
    users = tuple(f'user-{u}' for u in range(e.num_users))
    items = tuple(f'item-{i}' for i in range(e.num_items))
    write_export(tmp_path / 'ext', e.user_embeddings, e.item_embeddings,
                 e.seen_rowptr, e.seen_items, e.item_popularity, model={'name': 'x'},
                 user_ids=users, item_ids=items)
    with TestClient(create_app(tmp_path / 'ext', sighup=False)) as c:
        got = c.get('/recommend?user=user-5&k=4').json()
        want, _ = plain_ranking(e, 5, 4)
        assert got['user'] == 'user-5' and got['items'] == [items[i] for i in want]
        fallback = c.get('/recommend?user=5&k=2').json()  # not an id of this export
        assert not fallback['known'] and fallback['items'][0].startswith('item-')
        r = c.post('/recommend', json={'users': ['user-1', 5]})
        assert r.status_code == 422 and r.json()['error']['field'] == 'users[1]'
        assert c.get('/similar?item=item-3&k=2').json()['item'] == 'item-3'
        assert c.get('/similar?item=3').status_code == 404
        assert c.get('/metadata').json()['serving']['ids'] == {'user': 'external',
                                                               'item': 'external'}


def _export(checkpoint, out, name='bpr', seed=999, overwrite=False):
    args = ['export', str(checkpoint(name, seed)), '--output', str(out)]
    assert main(args + (['--overwrite'] if overwrite else [])) == 0
    return out


def test_reload_swaps_atomically_and_keeps_requests_in_flight(checkpoint, tmp_path):
    out = _export(checkpoint, tmp_path / 'exp', seed=1)
    service = Service(out)
    old = service.snapshot
    with TestClient(create_app(service=service, sighup=False)) as c:
        before = c.get('/recommend?user=4&k=5').json()
        # a request that is inside the index when the reload happens
        entered, release = threading.Event(), threading.Event()
        search = old.index.search

        def slow_search(*args, **kwargs):
            entered.set()
            release.wait(10)
            return search(*args, **kwargs)

        old.index.search = slow_search
        in_flight = {}
        t = threading.Thread(target=lambda: in_flight.update(
            c.get('/recommend?user=4&k=5').json()))
        t.start()
        assert entered.wait(10)
        _export(checkpoint, out, seed=2, overwrite=True)
        reloaded = c.post('/reload').json()
        assert reloaded == {'reloaded': True, 'export': resolve_export(out).name,
                            'previous': old.id}
        after = c.get('/recommend?user=4&k=5').json()
        release.set()
        t.join()
        assert in_flight == before and in_flight['export'] == old.id
        assert after['export'] == reloaded['export'] and after['items'] != \
            before['items']
        assert c.post('/reload').json()['reloaded'] is False
        # a damaged new version is refused; the current one stays
        _export(checkpoint, out, seed=1, overwrite=True)
        (resolve_export(out) / 'user_embeddings.npy').write_bytes(b'broken')
        r = c.post('/reload')
        assert r.status_code == 500 and 'sha256 differs' in r.json()['error'][
            'message'] and 'Traceback' not in r.text
        assert c.get('/health').json()['export'] == reloaded['export']


@pytest.mark.parametrize('kind', ['faiss-flat', 'faiss-hnsw'])
def test_faiss_indexes(client, export_dir, kind):
    require('faiss')
    e = load_export(export_dir)
    with TestClient(create_app(export_dir, ServeConfig(index=kind), sighup=False)) as c:
        assert c.get('/metadata').json()['serving']['index'] == kind
        for user in (0, 42, 99):
            got = c.get(f'/recommend?user={user}&k=10').json()
            assert not set(got['items']) & set(e.seen(user).tolist())
            if kind == 'faiss-flat':  # exact
                assert_answer(got, *plain_ranking(e, user, 10))
            else:  # approximate: true scores of the items it found, best first
                u = e.user_embeddings[user].astype(np.float64)
                np.testing.assert_allclose(
                    got['scores'], e.item_embeddings[got['items']] @ u, rtol=1e-5)
        assert len(c.get('/similar?item=3&k=5').json()['items']) == 5


def test_without_the_serve_extra(monkeypatch, export_dir, capsys):
    monkeypatch.setitem(sys.modules, 'fastapi', None)
    with pytest.raises(ImportError, match=r"mambarec-pyg\[serve\]"):
        create_app(export_dir)
    monkeypatch.setitem(sys.modules, 'uvicorn', None)
    assert main(['serve', str(export_dir)]) == 1
    assert "pip install 'mambarec-pyg[serve]'" in capsys.readouterr().err


def test_serve_command_errors(tmp_path, capsys):
    assert main(['serve', str(tmp_path / 'none')]) == 1
    assert 'export directory not found' in capsys.readouterr().err
    assert main(['serve', str(tmp_path), '--index', 'annoy']) == 2
    assert "index: expected one of 'exact'" in capsys.readouterr().err
    assert main(['serve', str(tmp_path), '--port', '70000']) == 2
    assert main(['serve', str(tmp_path), '--max-k', '0']) == 2


def test_reload_endpoint_can_be_switched_off(export_dir):
    config = ServeConfig(reload_endpoint=False)
    with TestClient(create_app(export_dir, config, sighup=False)) as c:
        r = c.post('/reload')
        assert r.status_code == 404 and r.json()['error']['status'] == 404
        assert c.get('/docs').status_code == 404  # no generated pages either


def test_the_server_needs_neither_torch_nor_the_other_commands():
    import subprocess
    code = ('import sys, mambarec_pyg.serve.__main__, mambarec_pyg.serve.app, '
            'mambarec_pyg.serve.service, mambarec_pyg.serve.loadgen; '
            'assert "torch" not in sys.modules, "torch imported"')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_app_factory_reads_the_directory_from_the_environment(export_dir,
                                                              monkeypatch):
    # uvicorn --factory mambarec_pyg.serve.app:create_app calls create_app()
    monkeypatch.setenv('MAMBAREC_EXPORT_DIR', str(export_dir))
    with TestClient(create_app()) as c:
        assert c.get('/health').json()['export'] == load_export(export_dir).id
    monkeypatch.delenv('MAMBAREC_EXPORT_DIR')
    with pytest.raises(ValueError, match='MAMBAREC_EXPORT_DIR'):
        create_app()


def test_default_k_is_20_or_max_k(export_dir):
    with TestClient(create_app(export_dir, ServeConfig(max_k=5), sighup=False)) as c:
        assert len(c.get('/recommend?user=1').json()['items']) == 5
        assert len(c.post('/recommend', json={'users': [1]}).json()['results'][0][
            'items']) == 5
        assert c.get('/recommend?user=1&k=6').status_code == 422
    with TestClient(create_app(export_dir, sighup=False)) as c:
        assert len(c.get('/recommend?user=1').json()['items']) == 20
        assert len(c.get('/similar?item=1').json()['items']) == 20
