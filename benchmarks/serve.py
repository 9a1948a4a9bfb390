"""Load on the recommendation service: throughput, p50 / p99 latency and errors.

On the Baby-scale synthetic preset (19,445 users, 7,050 items): an untrained model
(LightGCN by default; latency does not depend on training) is exported and served by
``python -m mambarec_pyg.serve`` (what the Dockerfile runs) in a subprocess on a
loopback port; ``--clients`` concurrent clients (16) then send

1. ``--requests`` single-user requests (20,000): ``GET /recommend?user=U&k=20`` for
   random known users;
2. ``--batch-requests`` batch requests (20,000) of ``--batch-size`` users (100):
   ``POST /recommend``;

every answer is checked (status 200, ``k`` items for a known user). Prints
throughput, p50 / p90 / p99 latency, errors and the server's resident memory at the
start and the end, the rows of the README's Serving table, and writes
``benchmarks/results/serve.json`` (``serve-quick.json`` with ``--quick``).

``--soak`` then runs the soak test (``tests/serve/test_soak.py``, marked slow): five
minutes of load with a new export reloaded every 30 s, zero failures and flat memory
required (``--soak-seconds``, ``--reload-seconds``).

The clients run in this process (Python threads) and share the machine with the
server, as a local load test does; the README's figures are measured on an otherwise
idle machine.

    python benchmarks/serve.py                 # Baby scale, ~5-10 minutes on 2 cores
    python benchmarks/serve.py --quick         # tiny preset, a few hundred requests
    python benchmarks/serve.py --soak          # + the 5-minute soak (the README)
    python benchmarks/serve.py --quick --soak  # everything, small, a 10 s soak
    python benchmarks/serve.py --model itemknncbf  # a content-kNN (sparse) export
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby', help='synthetic preset (baby)')
    parser.add_argument('--model', default='lightgcn', help='model to export '
                        '(untrained; default lightgcn)')
    parser.add_argument('--export', default=None, metavar='DIR',
                        help='serve this export instead of making one')
    parser.add_argument('--index', default='exact',
                        help='exact, faiss-flat or faiss-hnsw')
    parser.add_argument('--clients', type=int, default=16)
    parser.add_argument('--requests', type=int, default=20_000)
    parser.add_argument('--batch-requests', type=int, default=20_000)
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--k', type=int, default=20)
    parser.add_argument('--quick', action='store_true',
                        help='tiny preset, 500 + 200 requests, a 10 s soak')
    parser.add_argument('--soak', action='store_true',
                        help='then run the soak test (tests/serve/test_soak.py)')
    parser.add_argument('--soak-seconds', type=float, default=300.0)
    parser.add_argument('--reload-seconds', type=float, default=30.0)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.requests, args.batch_requests = 'tiny', 500, 200
        args.soak_seconds, args.reload_seconds = 10.0, 3.0
    os.environ.setdefault('OMP_NUM_THREADS', '1')

    from mambarec_pyg.io import write_json
    from mambarec_pyg.serve.export import load_export
    from mambarec_pyg.serve.loadgen import LocalServer, run_load

    with tempfile.TemporaryDirectory(prefix='mambarec-serve-bench-') as tmp:
        directory = Path(args.export) if args.export else make_export(
            args.preset, args.model, Path(tmp) / 'export')
        export = load_export(directory)
        U = export.num_users
        rng = np.random.default_rng(0)
        singles = rng.integers(0, U, size=args.requests)
        batches = rng.integers(0, U, size=(max(args.batch_requests, 1),
                                           min(args.batch_size, U)))
        k = args.k
        expect = np.minimum(k, export.num_items - np.diff(export.seen_rowptr))

        def check_single(n, status, answer):
            want = int(expect[singles[n]])
            return None if answer.get('known') and len(answer['items']) == want else \
                f'expected {want} items for user {singles[n]}'

        def check_batch(n, status, answer):
            got = [len(r['items']) for r in answer.get('results', [])]
            return None if got == expect[batches[n]].tolist() else 'wrong sizes'

        results = {'preset': args.preset, 'model': export.manifest['model']['name'],
                   'users': U, 'items': export.num_items,
                   'embedding_dim': export.dim, 'index': args.index,
                   'clients': args.clients, 'k': k}
        server_args = ['--index', args.index, '--log-level', 'warning',
                       '--max-batch', str(max(1000, args.batch_size))]
        with LocalServer(directory, server_args, lean=True) as server:
            results['rss_start_mib'] = mib(server.rss())
            run_load(server.url, lambda n: ('GET', f'/recommend?user={n % U}', None),
                     clients=args.clients, requests=200)  # warm-up
            single = run_load(
                server.url,
                lambda n: ('GET', f'/recommend?user={singles[n]}&k={k}', None),
                clients=args.clients, requests=args.requests, check=check_single)
            results['single'] = single.as_dict()
            report('single user', single)
            batch = run_load(
                server.url,
                lambda n: ('POST', '/recommend',
                           {'users': batches[n].tolist(), 'k': k}),
                clients=args.clients, requests=args.batch_requests, check=check_batch)
            results['batch'] = dict(batch.as_dict(), batch_size=batches.shape[1])
            report(f'batch of {batches.shape[1]}', batch)
            results['rss_end_mib'] = mib(server.rss())
        print(f"server memory: {results['rss_start_mib']} MiB at start, "
              f"{results['rss_end_mib']} MiB at the end")
        if args.soak:
            results['soak'] = soak(args)
    from mambarec_pyg.train.checkpoint import environment
    results['environment'] = environment()
    name = 'serve-quick.json' if args.quick else 'serve.json'
    out = Path(args.out or REPO / 'benchmarks' / 'results' / name)
    write_json(out, results)
    print(readme_rows(results))
    print(f'wrote {out}')
    if results['single']['errors'] or results['batch']['errors'] or (
            args.soak and not results['soak'].get('passed')):
        sys.exit(1)
    return results


def mib(size):
    return None if size is None else round(size / 2**20, 1)


def make_export(preset: str, model_name: str, out: Path) -> Path:
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.serve.export import export_model
    from mambarec_pyg.train.experiment import build_model
    from mambarec_pyg.utils import seed_everything
    data = synthetic_dataset(preset, seed=0)
    seed_everything(0)
    model = build_model(data, get_config_class(model_name)())
    export_model(model, data, out)
    return out


def report(what: str, result) -> None:
    d = result.as_dict()
    print(f"{what:>14}: {d['requests']:,} requests in {d['seconds']:.1f} s, "
          f"{d['throughput_rps']:,.0f}/s, p50 {d['p50_ms']:.1f} ms, p99 "
          f"{d['p99_ms']:.1f} ms, errors {d['errors']}")
    for failure in d['first_failures']:
        print(f'    {failure}')


def readme_rows(results: dict) -> str:
    """The rows of the README's Serving table, and its memory line."""
    def row(what, d):
        if not d or 'throughput_rps' not in d:
            return f'| {what} | not run | | | |'
        return (f"| {what} | {d['throughput_rps']:,.0f} requests/s | "
                f"{d['p50_ms']:.1f} ms | {d['p99_ms']:.1f} ms | {d['errors']} |")

    k = results['k']
    lines = [f"README rows ({results['preset']}, {results['model']}, "
             f"{results['clients']} clients):",
             row(f"{results['single']['requests']:,} single users, `k={k}`",
                 results['single']),
             row(f"{results['batch']['requests']:,} batches of "
                 f"{results['batch']['batch_size']} users, `k={k}`",
                 results['batch'])]
    memory = (f"Server memory (RSS): {results['rss_start_mib']} MiB at start, "
              f"{results['rss_end_mib']} MiB after the load")
    s = results.get('soak')
    if s is not None:
        lines.append(row(f"soak: {s.get('seconds', 0) / 60:.1f} minutes, a reload "
                         f"every {s.get('reload_seconds', 0):g} s (`--soak`)"
                         + ('' if s.get('passed') else ' FAILED'), s))
        if 'rss_start_mib' in s:
            memory += (f"; soak {s['rss_start_mib']:.0f} MiB at start, "
                       f"{s['rss_end_mib']:.0f} MiB at the end (median first third "
                       f"{s['rss_early_mib']:.0f}, last third "
                       f"{s['rss_late_mib']:.0f}, max {s['rss_max_mib']:.0f})")
    return '\n'.join(lines + [memory + '.'])


def soak(args) -> dict:
    """Run tests/serve/test_soak.py (marked slow) with this benchmark's settings."""
    with tempfile.NamedTemporaryFile(suffix='.json', delete=False) as f:
        report_path = f.name
    from mambarec_pyg.data.synthetic import default_cache_root
    # the same data cache as this process (the tests would make a temporary one)
    env = dict(os.environ, MAMBAREC_CACHE=str(default_cache_root().parent),
               MAMBAREC_SOAK_SECONDS=str(args.soak_seconds),
               MAMBAREC_SOAK_RELOAD_SECONDS=str(args.reload_seconds),
               MAMBAREC_SOAK_PRESET=args.preset,
               MAMBAREC_SOAK_CLIENTS=str(args.clients),
               MAMBAREC_SOAK_REPORT=report_path)
    print(f'soak: {args.soak_seconds:.0f} s of load, a reload every '
          f'{args.reload_seconds:.0f} s ({args.preset})', flush=True)
    code = subprocess.call([sys.executable, '-m', 'pytest', '-q', '-p',
                            'no:cacheprovider', '-m', 'slow',
                            str(REPO / 'tests' / 'serve' / 'test_soak.py')],
                           cwd=REPO, env=env)
    try:
        figures = json.loads(Path(report_path).read_text())
    except (OSError, ValueError):
        figures = {}
    finally:
        os.unlink(report_path)
    figures['passed'] = code == 0
    figures['reload_seconds'] = args.reload_seconds
    print(f"soak: {'passed' if code == 0 else 'FAILED'}: "
          f"{figures.get('requests', 0):,} requests, {figures.get('errors')} errors, "
          f"{figures.get('reloads')} reloads, RSS {figures.get('rss_early_mib', 0):.0f}"
          f" -> {figures.get('rss_late_mib', 0):.0f} MiB")
    return figures


if __name__ == '__main__':
    main()
