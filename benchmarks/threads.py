"""Training speed against the CPU thread setting, alone and with another CPU-bound
process running.

On a machine with few cores, OpenMP threads that spin while they wait for each other
(``OMP_WAIT_POLICY=ACTIVE``, the usual default of the runtime) can make every
parallel region wait for a thread the operating system has descheduled. This script
times MambaRec training epochs (median of ``--epochs``, each run in a fresh process
so the policy applies before torch loads its OpenMP runtime) for three settings:

* ``2 threads, active wait`` -- OpenMP's usual behaviour;
* ``2 threads, passive wait`` -- what ``mambarec_pyg`` sets by default
  (``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it);
* ``1 thread`` -- ``--train.num-threads 1``;

each alone and while a competing process runs: a tight Python loop (one core busy,
the default), ``--competitor torch`` (another torch process with two threads, like a
second training run) or ``--competitor matmul`` (a numpy matrix loop).

    python benchmarks/threads.py [--preset tiny] [--epochs 5]
    python benchmarks/threads.py --preset baby --epochs 2

Writes ``benchmarks/results/threads-<preset>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / 'results'

SETTINGS = {
    '2 threads, active wait': ({'OMP_WAIT_POLICY': 'ACTIVE'}, 2),
    '2 threads, passive wait': ({'OMP_WAIT_POLICY': 'PASSIVE'}, 2),
    '1 thread': ({'OMP_WAIT_POLICY': 'PASSIVE'}, 1),
}

_BUSY = {
    'python': 'while True:\n    pass\n',
    # another training-like process: torch with two threads and its own waits
    'torch': 'import torch\ntorch.set_num_threads(2)\na = torch.randn(256, 256)\n'
             'while True:\n    a = torch.tanh(a @ a)\n',
    'matmul': 'import numpy as np\na = np.random.rand(400, 400)\nwhile True:\n'
              '    a = a @ a\n    a /= np.abs(a).max()\n',
}


def epochs(preset: str, n: int, env: dict, threads: int) -> list:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, '-m', 'mambarec_pyg.cli', 'train', '--synthetic',
               preset, '--output', out, '--overwrite', '--device', 'cpu', '--quiet',
               '--train.max-epochs', str(n), '--train.num-threads', str(threads),
               '--train.patience', '1000']
        subprocess.run(cmd, check=True, capture_output=True,
                       env=dict(os.environ, **env))
        history = json.loads((Path(out) / 'results.json').read_text())['history']
    return [h['train_s'] for h in history]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--preset', default='tiny')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--competitor', choices=sorted(_BUSY), default='python')
    p.add_argument('--out')
    args = p.parse_args(argv)
    from mambarec_pyg.data import synthetic_dataset
    synthetic_dataset(args.preset, seed=0)  # generate once, outside the timings
    rows = []
    for contended in (False, True):
        busy = None
        if contended:
            busy = subprocess.Popen([sys.executable, '-c', _BUSY[args.competitor]])
            time.sleep(1.0)
        try:
            for name, (env, threads) in SETTINGS.items():
                times = epochs(args.preset, args.epochs, env, threads)
                rows.append({'setting': name, 'contended': contended,
                             'epoch_s': times, 'median_s': statistics.median(times)})
                print(f"{'with' if contended else 'alone':5s} {name:26s} median "
                      f"{statistics.median(times):7.3f} s  ("
                      f"{', '.join(f'{t:.2f}' for t in times)})", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    result = {'preset': args.preset, 'epochs': args.epochs, 'cpu_count': os.cpu_count(),
              'competitor': args.competitor, 'rows': rows}
    from mambarec_pyg.io import write_json
    path = Path(args.out) if args.out else RESULTS / f'threads-{args.preset}.json'
    write_json(path, result)
    print(f'wrote {path}')
    return result


if __name__ == '__main__':
    main()
