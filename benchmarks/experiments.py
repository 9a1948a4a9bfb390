"""Wall time of a 12-cell experiment on each executor, and the overhead per cell.

The experiment is ``mambarec experiment table2 --quick`` on a synthetic preset with
4 models x 3 seeds = 12 cells (``--models``, ``--seeds`` change it), run as a fresh
command (a new process, a new output directory) once per setting:

* ``local, 1 worker`` -- one after the other in the command's process;
* ``local, 2 workers`` (``--workers``) -- a pool of processes;
* ``ray, 2 workers`` -- a local Ray cluster (when Ray is installed);
* ``slurm (local), 2 workers`` -- submitit's local executor, the Slurm code path
  (when submitit is installed).

For each: the wall time of the command; the time the cells spent in their runs
(the sum of ``results.json``'s ``timings.total_s``); the **overhead per cell** --
the worker time not spent in a run (starting processes or a cluster, loading data,
passing results back), ``(wall x workers - run time) / cells``; and the wall time
of the same command run again, when every cell is reused (the per-cell cost of
checking a finished cell). The tables of all settings must be identical (checked).

    python benchmarks/experiments.py                     # tiny preset, 2 epochs
    python benchmarks/experiments.py --preset baby --epochs 5 --workers 4

Writes ``benchmarks/results/experiments-<preset>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'
ROOT = Path(__file__).resolve().parents[1]


def _command(out: Path, args, executor: str, workers: int):
    cmd = [sys.executable, '-m', 'mambarec_pyg.cli', 'experiment', 'table2', '--quick',
           '--synthetic', args.preset, '--models', *args.models, '--seeds',
           str(args.seeds), '--train.max-epochs', str(args.epochs), '--no-figures',
           '--quiet', '--output', str(out), '--workers', str(workers)]
    if executor == 'ray':
        cmd += ['--executor', 'ray']
    elif executor == 'slurm':
        cmd += ['--executor', 'slurm', '--slurm-cluster', 'local']
    return cmd


def _timed(cmd) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep +
               os.environ.get('PYTHONPATH', ''))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f'{" ".join(cmd)} failed:\n{proc.stderr[-2000:]}')
    return wall


def _available(executor: str) -> bool:
    module = {'ray': 'ray', 'slurm': 'submitit'}.get(executor)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='tiny')
    p.add_argument('--models', nargs='+', default=['bpr', 'lightgcn', 'vbpr',
                                                   'mambarec'])
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--epochs', type=int, default=2)
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--out')
    args = p.parse_args(argv)
    cells = len(args.models) * args.seeds
    settings = [('local', 1), ('local', args.workers), ('ray', args.workers),
                ('slurm', args.workers)]
    rows, tables = [], {}
    with tempfile.TemporaryDirectory(prefix='bench-experiments-') as tmp:
        # the synthetic data and graph caches, made once before any timing
        _timed(_command(Path(tmp) / 'warm', args, 'local', 1))
        for executor, workers in settings:
            if not _available(executor):
                print(f'{executor}: not installed, skipped')
                continue
            out = Path(tmp) / f'{executor}-{workers}'
            wall = _timed(_command(out, args, executor, workers))
            again = _timed(_command(out, args, executor, workers))
            summary = json.loads((out / 'summary.json').read_text())
            run_s = 0.0
            for cell in summary['cells']:
                if cell['shared_with'] is None:
                    record = json.loads((out / cell['directory'] /
                                         'results.json').read_text())
                    run_s += float(record['timings'].get('total_s', 0.0))
            tables[(executor, workers)] = (out / 'table2.json').read_text()
            row = {'executor': executor, 'workers': workers, 'cells': cells,
                   'wall_s': wall, 'run_s': run_s,
                   'overhead_per_cell_s': (wall * workers - run_s) / cells,
                   'rerun_wall_s': again, 'rerun_per_cell_s': again / cells}
            rows.append(row)
            print(f"{executor:>6} x{workers}: {wall:7.1f} s wall, {run_s:6.1f} s in "
                  f"runs, overhead {row['overhead_per_cell_s']:.2f} s/cell; rerun "
                  f"{again:.1f} s ({row['rerun_per_cell_s']:.2f} s/cell)", flush=True)
    same = len(set(tables.values())) <= 1
    print('tables identical across executors:', same)
    from mambarec_pyg.io import write_json
    result = {'benchmark': 'experiments', 'preset': args.preset,
              'models': args.models, 'seeds': args.seeds, 'epochs': args.epochs,
              'cpu_count': os.cpu_count(), 'rows': rows,
              'tables_identical': same}
    path = Path(args.out) if args.out else RESULTS / f'experiments-{args.preset}.json'
    write_json(path, result)
    print(f'written: {path}')
    if not same:
        raise SystemExit('the tables differ between executors')
    return result


if __name__ == '__main__':
    main()
