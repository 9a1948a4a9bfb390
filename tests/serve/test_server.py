"""The real server, as a user runs it: ``mambarec serve`` in a subprocess on a free
loopback port, spoken to with httpx -- every endpoint, bad inputs, and exports
replaced and reloaded (POST /reload and SIGHUP) while several clients send
requests: no failure, and every answer is wholly the old export's or wholly the
new one's."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from serve_support import require

from mambarec_pyg.cli import main
from mambarec_pyg.serve.export import resolve_export
from mambarec_pyg.serve.service import Service

httpx = require('httpx')
require('fastapi')
require('uvicorn')
from mambarec_pyg.serve.loadgen import LocalServer, run_load  # noqa: E402

USERS = 100


def json_body(obj) -> bytes:
    return json.dumps(obj).encode()


def assert_same_answer(got, want):
    """Equal answers; scores to float32 rounding (the server's BLAS may sum in
    another order than this process's)."""
    if isinstance(got, dict) and isinstance(want, dict):
        assert got.keys() == want.keys(), (got, want)
        for key in got:
            if key == 'scores':
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)
            else:
                assert_same_answer(got[key], want[key])
    elif isinstance(got, list) and got and isinstance(got[0], dict):
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert_same_answer(a, b)
    else:
        assert got == want


def export(checkpoint, out, seed, overwrite=True):
    args = ['export', str(checkpoint('lightgcn', seed)), '--output', str(out)]
    assert main(args + (['--overwrite'] if overwrite else [])) == 0
    return resolve_export(out).name


@pytest.fixture(scope='module')
def served(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp('server') / 'exp'
    export(checkpoint, out, 1, overwrite=False)
    with LocalServer(out, ['--max-batch', '200', '--log-level', 'warning']) as server:
        yield server, out
        assert server.stop() in (0, -15)  # SIGTERM: a clean shutdown
        assert 'Traceback' not in server.log(), server.log()


def test_every_endpoint(served):
    server, out = served
    local = Service(out)  # the same export in process
    with httpx.Client(base_url=server.url, timeout=30) as c:
        health = c.get('/health').json()
        assert health['status'] == 'ok' and health['export'] == local.snapshot.id
        meta = c.get('/metadata').json()
        assert meta['manifest'] == local.snapshot.export.manifest
        for user in (0, 17, 99, 100, 12345):
            got = c.get('/recommend', params={'user': user, 'k': 7}).json()
            want = local.recommend_query([('user', str(user)), ('k', '7')])
            assert_same_answer(got, want)
            assert got['known'] == (user < USERS)
        body = {'users': [5, 5, 100, 3], 'k': 4, 'exclude_seen': False}
        got = c.post('/recommend', json=body).json()
        want = local.recommend_batch(json_body(body))
        assert_same_answer(got, want)
        assert len(got['results']) == 4
        got = c.get('/similar', params={'item': 9, 'k': 5}).json()
        assert_same_answer(got, local.similar_query([('item', '9'), ('k', '5')]))
        assert len(c.get('/recommend?user=3&k=1000').json()['items']) < 60
        assert c.post('/reload').json() == {'reloaded': False,
                                            'export': health['export'],
                                            'previous': health['export']}


@pytest.mark.parametrize('method, path, body, status, field', [
    ('GET', '/recommend?user=x', None, 422, 'user'),
    ('GET', '/recommend?user=-3', None, 422, 'user'),
    ('GET', '/recommend?user=3&k=0', None, 422, 'k'),
    ('GET', '/recommend?user=3&k=5000', None, 422, 'k'),
    ('POST', '/recommend', b'{"users": [1,', 400, 'body'),
    ('POST', '/recommend', b'{"users": []}', 422, 'users'),
    ('POST', '/recommend', b'{"users": [' + b'1,' * 200 + b'1]}', 422, 'users'),
    ('POST', '/recommend', b'{"users": [' + b'1,' * 600000 + b'1]}', 413, 'body'),
    ('GET', '/similar?item=60', None, 404, 'item'),
    ('GET', '/missing', None, 404, None),
    ('PUT', '/health', None, 405, None),
])
def test_bad_input(served, method, path, body, status, field):
    server, _ = served
    r = httpx.request(method, server.url + path, content=body, timeout=30)
    assert r.status_code == status
    assert r.headers['content-type'] == 'application/json'
    assert r.json()['error']['field'] == field and 'Traceback' not in r.text


def test_reload_during_traffic(served, checkpoint):
    server, out = served
    # expected answers of the two exports (seeds 1 and 2 rank differently)
    contents = {}
    expected = {}
    batches = [list(range(b, b + 10)) for b in range(0, USERS, 10)]
    for seed in (2, 1):  # ends on seed 1, the export the server started with
        vid = export(checkpoint, out, seed)
        local = Service(resolve_export(out))
        expected[seed] = {
            'get': [local.recommend_query([('user', str(u)), ('k', '10')])['items']
                    for u in range(USERS)],
            'post': [[r['items'] for r in local.recommend_batch(
                json_body({'users': users, 'k': 10}))['results']] for users in batches]}
        contents[vid] = seed
    assert expected[1]['get'] != expected[2]['get']
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post('/reload').json()['export'] == resolve_export(out).name
    seen_exports = set()

    def request(n):
        if n % 3 == 2:
            return 'POST', '/recommend', {'users': batches[n % 10], 'k': 10}
        return 'GET', f'/recommend?user={n % USERS}&k=10', None

    def check(n, status, answer):
        seed = contents.get(answer.get('export'))
        if seed is None:
            return f"unknown export {answer.get('export')}"
        seen_exports.add(answer['export'])
        if n % 3 == 2:
            got = [r['items'] for r in answer['results']]
            ok = got == expected[seed]['post'][n % 10]
        else:
            ok = answer['items'] == expected[seed]['get'][n % USERS]
        return None if ok else f'answer differs from export {answer["export"]}'

    result, stop = {}, threading.Event()
    load = threading.Thread(target=lambda: result.update(
        load=run_load(server.url, request, clients=6, duration=120.0, check=check,
                      stop=stop)))
    load.start()
    swaps = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for n in range(4):
            time.sleep(0.8)
            seed = 2 if n % 2 == 0 else 1
            vid = export(checkpoint, out, seed)
            contents[vid] = seed
            if n % 2 == 0:
                r = c.post('/reload')
                assert r.status_code == 200 and r.json()['export'] == vid
            else:  # SIGHUP: the reload happens in the background
                server.sighup()
                deadline = time.monotonic() + 30
                while c.get('/health').json()['export'] != vid:
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.05)
            swaps.append(vid)
        time.sleep(0.5)
    stop.set()
    load.join()
    res = result['load']
    assert res.errors == 0, res.failures[:5]
    assert res.requests >= 50 and len(seen_exports) >= 3, (res.requests, seen_exports)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get('/health').json()['export'] == swaps[-1]


def test_run_load_counts_failures(served):
    server, _ = served
    res = run_load(server.url, lambda n: ('GET', f'/recommend?user={n - 2}', None),
                   clients=2, requests=6,
                   check=lambda n, s, a: 'odd' if a['user'] % 2 else None)
    assert res.requests == 6 and res.errors == 4  # users -2, -1 (422), 1 and 3
    assert any('status 422' in f for f in res.failures)
    assert res.latencies_ms.size == 6 and np.isfinite(res.percentile(99))
