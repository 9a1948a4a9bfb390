"""Time generating, writing and loading a Baby-scale dataset in the MMRec format.

Generates the ``baby`` synthetic preset (19,445 users, 7,050 items, 160,792
interactions, 4096-d image and 384-d text features, the sizes of the paper's Table 1),
writes it as MMRec files, and loads it back with :func:`mambarec_pyg.data.load_mmrec`
several times (the page cache is warm after the first run). Prints a table and writes
``benchmarks/results/data_load.json``.

Targets on a 2-core machine: generation + write at most 20 s, loading at most 3 s.

    python benchmarks/data_load.py [--preset baby] [--repeats 5]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mambarec_pyg.data import PRESETS, load_mmrec, make_synthetic, summarize, write_mmrec
from mambarec_pyg.io import write_json

TARGETS = {'generate_and_write_s': 20.0, 'load_median_s': 3.0}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby', choices=sorted(PRESETS))
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'data_load.json'))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix='mambarec-bench-') as root:
        t0 = time.perf_counter()
        data = make_synthetic(args.preset, args.seed)
        t1 = time.perf_counter()
        directory = write_mmrec(data, root, data.name)
        t2 = time.perf_counter()
        size = sum(p.stat().st_size for p in directory.iterdir())
        del data
        loads = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            loaded = load_mmrec(root, directory.name)
            loads.append(time.perf_counter() - t)
        summary = summarize(loaded)

    result = {
        'preset': args.preset,
        'seed': args.seed,
        'users': summary.num_users,
        'items': summary.num_items,
        'interactions': summary.num_interactions,
        'density': summary.density_percent,
        'modalities': dict(summary.modality_dims),
        'files_mb': round(size / 2**20, 1),
        'generate_s': round(t1 - t0, 3),
        'write_s': round(t2 - t1, 3),
        'generate_and_write_s': round(t2 - t0, 3),
        'load_s': [round(t, 3) for t in loads],
        'load_median_s': round(statistics.median(loads), 3),
        'targets': TARGETS,
        'machine': {'python': platform.python_version(), 'torch': torch.__version__,
                    'threads': torch.get_num_threads(), 'cpu': platform.processor()},
    }
    rows = [('step', 'seconds', 'target'),
            ('generate', f"{result['generate_s']:.2f}", ''),
            ('write', f"{result['write_s']:.2f}", ''),
            ('generate + write', f"{result['generate_and_write_s']:.2f}",
             f"<= {TARGETS['generate_and_write_s']:.0f}"),
            (f'load (median of {args.repeats})', f"{result['load_median_s']:.2f}",
             f"<= {TARGETS['load_median_s']:.0f}")]
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    print(summary)
    print(f"\nfiles: {result['files_mb']} MiB")
    for r in rows:
        print(f'{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]}')
    out = Path(args.out)
    write_json(out, result)
    print(f'\nwritten {out}')
    return result


if __name__ == '__main__':
    main()
