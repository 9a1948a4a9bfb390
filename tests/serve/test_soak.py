"""Soak: concurrent load on the server (``python -m mambarec_pyg.serve``, what the
Dockerfile runs) while a new export is published and reloaded again and again
(POST /reload and SIGHUP in turn): zero failed requests, every answer wholly one
export's, and the server's resident memory flat.

Short by default, so CI runs it; ``benchmarks/serve.py --soak`` runs it for five
minutes with a reload every 30 s on the Baby-scale export. Settings (environment):

* ``MAMBAREC_SOAK_SECONDS`` -- seconds of load (default 6);
* ``MAMBAREC_SOAK_RELOAD_SECONDS`` -- seconds between reloads (default 1.5);
* ``MAMBAREC_SOAK_PRESET`` -- the synthetic preset (default ``tiny``);
* ``MAMBAREC_SOAK_CLIENTS`` -- concurrent clients (default 16);
* ``MAMBAREC_SOAK_REPORT`` -- a JSON file to write the figures to.

Memory is flat when the median RSS of the last third of the run is at most 10% plus
32 MiB above the median of the first third (both after the first reload). The report
also has the RSS at the start of the load and at its end (``rss_start_mib``,
``rss_end_mib``) and the largest sample.
"""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

from serve_support import require

from mambarec_pyg.data import synthetic_dataset
from mambarec_pyg.models.lightgcn import LightGCNConfig
from mambarec_pyg.serve.export import export_model, load_export, write_export
from mambarec_pyg.serve.service import Service
from mambarec_pyg.train.experiment import build_model
from mambarec_pyg.utils import seed_everything

httpx = require('httpx')
require('fastapi')
require('uvicorn')
from mambarec_pyg.serve.loadgen import LocalServer, run_load  # noqa: E402

QUERY_USERS = 64
BATCHES = 4


def _setting(name, default, kind=float):
    return kind(os.environ.get(f'MAMBAREC_SOAK_{name}', default))


@pytest.mark.slow
def test_soak(tmp_path):
    seconds = _setting('SECONDS', 6.0)
    every = _setting('RELOAD_SECONDS', 1.5)
    preset = os.environ.get('MAMBAREC_SOAK_PRESET', 'tiny')
    clients = _setting('CLIENTS', 16, int)
    data = synthetic_dataset(preset, seed=0)
    seed_everything(0)
    model = build_model(data, LightGCNConfig())
    out = tmp_path / 'export'
    export_model(model, data, out)
    first = load_export(out)
    base = (first.user_embeddings, first.item_embeddings, first.seen_rowptr,
            first.seen_items, first.item_popularity)
    # content 1: the model; content 2: its user vectors negated (another ranking)
    contents = {1: base, 2: (-base[0], ) + base[1:]}
    rng = np.random.default_rng(0)
    users = rng.choice(first.num_users, size=QUERY_USERS, replace=False).tolist()
    size = min(100, first.num_users)
    batches = [rng.choice(first.num_users, size=size, replace=False).tolist()
               for _ in range(BATCHES)]
    expected, owner = {}, {}
    for c in (2, 1):  # ends on content 1
        vid = write_export(out, *contents[c], model={'name': 'lightgcn'},
                           overwrite=True).name
        local = Service(out)
        expected[c] = {
            'get': {u: local.recommend_query([('user', str(u))])['items']
                    for u in users},
            'post': [[r['items'] for r in local.recommend_batch(json.dumps(
                {'users': b}).encode())['results']] for b in batches]}
        owner[vid] = c
    assert expected[1]['get'] != expected[2]['get']

    def request(n):
        if n % 4 == 3:
            return 'POST', '/recommend', {'users': batches[n % BATCHES]}
        return 'GET', f'/recommend?user={users[n % QUERY_USERS]}', None

    served = set()

    def check(n, status, answer):
        c = owner.get(answer.get('export'))
        if c is None:
            return f"an export never published: {answer.get('export')}"
        served.add(answer['export'])
        if n % 4 == 3:
            ok = [r['items'] for r in answer['results']] == \
                expected[c]['post'][n % BATCHES]
        else:
            ok = answer['items'] == expected[c]['get'][users[n % QUERY_USERS]]
        return None if ok else f"answer differs from export {answer['export']}"

    with LocalServer(out, ['--log-level', 'warning'], lean=True) as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post('/reload').status_code == 200  # the newest version
        samples, stop, result = [], threading.Event(), {}

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic(), server.rss()))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample)
        load = threading.Thread(target=lambda: result.update(load=run_load(
            server.url, request, clients=clients, duration=seconds, check=check)))
        t0 = time.monotonic()
        sampler.start()
        load.start()
        reloads, first_reload = 0, None
        while time.monotonic() - t0 + every < seconds:
            time.sleep(every)
            c = 2 if reloads % 2 == 0 else 1
            vid = write_export(out, *contents[c], model={'name': 'lightgcn'},
                               overwrite=True).name
            owner[vid] = c
            if reloads % 2 == 0:
                r = http.post('/reload')
                assert r.status_code == 200 and r.json()['export'] == vid, r.text
            else:
                server.sighup()
                deadline = time.monotonic() + 60
                while http.get('/health').json()['export'] != vid:
                    assert time.monotonic() < deadline, server.log()
                    time.sleep(0.05)
            reloads += 1
            first_reload = first_reload or time.monotonic()
        load.join()
        stop.set()
        sampler.join()
        log = server.log()
    res = result['load']
    rss = [(t, r) for t, r in samples if r is not None and first_reload is not None
           and t >= first_reload]
    third = max(1, len(rss) // 3)
    early = float(np.median([r for _, r in rss[:third]])) if rss else float('nan')
    late = float(np.median([r for _, r in rss[-third:]])) if rss else float('nan')
    report = dict(res.as_dict(), preset=preset, clients=clients, reloads=reloads,
                  exports_served=len(served), rss_early_mib=early / 2**20,
                  rss_late_mib=late / 2**20,
                  rss_max_mib=max((r for _, r in rss), default=0) / 2**20,
                  rss_start_mib=next((r for _, r in samples if r is not None), 0) /
                  2**20,
                  rss_end_mib=next((r for _, r in reversed(samples)
                                    if r is not None), 0) / 2**20,
                  rss_samples=len(rss))
    if os.environ.get('MAMBAREC_SOAK_REPORT'):
        with open(os.environ['MAMBAREC_SOAK_REPORT'], 'w') as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    assert res.errors == 0, res.failures[:5]
    assert 'Traceback' not in log, log
    assert reloads >= 2 and len(served) >= 2, report
    if rss:
        assert late <= early * 1.10 + 32 * 2**20, report
