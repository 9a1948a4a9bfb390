"""How every cost grows with the catalog: loading, each kNN backend, one training
epoch and one full evaluation of LightGCN, FREEDOM and MambaRec, from Baby's size
to the largest catalog that fits the machine.

The datasets are multiples of Clothing (``factor`` times its users, items and
interactions: :class:`mambarec_pyg.data.scaled.ScaledPreset`; factor 0.3 is about
Baby's 7k items, 10 is ``clothing-x10``, 100 is ``clothing-x100``), written once
to ``--cache``. Every measurement runs in a fresh process, so its peak memory (the
process's maximum resident set, and the CUDA peak on a GPU) is its own:

* ``load`` -- ``load_mmrec`` of the files (memory-mapped, one copy);
* ``knn:<backend>`` -- the kNN graphs (k = 10) of every modality;
* ``<model>`` -- building the model (its graphs with ``--knn-backend``), one
  training epoch and one full evaluation of the validation users.

A step that fails (out of memory, ``--timeout``) stops the larger factors of that
step; a size whose feature tables alone exceed ``--max-memory-gb`` (default: 90% of
the RAM) or the free disk of ``--cache`` is not attempted. For each step, the exponent ``a`` of ``time ~ N^a`` and ``memory ~ N^b`` is
fitted by least squares on the logs over the sizes measured (the smallest factors
carry fixed costs, so the fit uses factors >= ``--fit-from``). Writes
``benchmarks/results/scaling.json`` and ``scaling.png`` (with matplotlib).

    python benchmarks/scaling.py [--factors 0.3 1 3 10 30] [--device cpu|cuda]
    python benchmarks/scaling.py --tiny       # a smoke run in a minute
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEPS_KNN = ('exact', 'faiss', 'hnsw', 'ivf')
MODELS = ('lightgcn', 'freedom', 'mambarec')


def _peak_mb(device: str) -> dict:
    out = {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith('cuda'):
        import torch
        out['peak_cuda_mb'] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _dataset(args, factor: float):
    from mambarec_pyg.data.scaled import ScaledPreset, is_scaled_complete, write_scaled
    preset = ScaledPreset('clothing', factor, image_dim=args.image_dim,
                          text_dim=args.text_dim)
    name = f'clothing-{factor:g}x-{args.image_dim}x{args.text_dim}'
    root = Path(args.cache)
    if not is_scaled_complete(root / name, preset, 0):
        write_scaled(preset, root, name, 0, overwrite=(root / name).exists())
    return root, name


def _does_not_fit(args, factor: float, memory: float) -> str:
    """Why ``factor`` is not attempted (its feature tables alone would not fit the
    memory or the cache's disk), or ''."""
    from mambarec_pyg.data.scaled import ScaledPreset
    p = ScaledPreset('clothing', factor, image_dim=args.image_dim,
                     text_dim=args.text_dim).sizes()
    table = p.num_items * (p.image_dim + p.text_dim) * 4
    stored = table * (0.5 if args.feature_dtype == 'float16' else 1.0)
    if stored > memory:
        return (f'the feature tables alone take {stored / 2**30:.1f} GiB, more than '
                f'{memory / 2**30:.1f} GiB')
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    name = f'clothing-{factor:g}x-{args.image_dim}x{args.text_dim}'
    if not (cache / name).exists() and table * 1.1 > shutil.disk_usage(cache).free:
        return f'{table / 2**30:.1f} GiB of files do not fit the disk of {cache}'
    return ''


def child(args) -> dict:
    """One measurement (``--child STEP --factor F``), printed as JSON."""
    import torch
    from mambarec_pyg.data import load_mmrec
    torch.set_num_threads(args.threads or torch.get_num_threads())
    root, name = _dataset(args, args.factor)
    t = time.perf_counter()
    data = load_mmrec(root, name, feature_dtype=args.feature_dtype)
    out = {'load_s': time.perf_counter() - t,
           'users': int(data['user'].num_nodes), 'items': int(data['item'].num_nodes),
           'interactions': int(data['user', 'interacts', 'item'].edge_index.size(1))}
    if args.feature_dim:
        from mambarec_pyg.data.features import FeatureReduction
        t = time.perf_counter()
        data = FeatureReduction(args.feature_dim)(data)
        out['reduce_s'] = time.perf_counter() - t
    step = args.child
    if step.startswith('knn:'):
        from mambarec_pyg.data.graphs import knn_edges
        backend = step.split(':', 1)[1]
        t = time.perf_counter()
        for m in data.modalities:
            knn_edges(data['item'][m], 10, backend=backend)
        out['time_s'] = time.perf_counter() - t
    elif step in MODELS:
        from mambarec_pyg.config import TrainConfig, model_config_class
        from mambarec_pyg.train.experiment import build_model
        from mambarec_pyg.train.trainer import Trainer
        from mambarec_pyg.data.knn import KNNBackend
        from mambarec_pyg.utils import seed_everything
        if args.knn_backend != 'exact':
            data.knn_backend = KNNBackend(args.knn_backend)
        options = {}
        if step != 'lightgcn' and not args.trainable_features:
            options['trainable_features'] = False
        seed_everything(999)
        t = time.perf_counter()
        model = build_model(data, model_config_class(step)(**options))
        out['build_s'] = time.perf_counter() - t
        cfg = TrainConfig(device=args.device, max_epochs=1, patience=10**6,
                          batch_size=args.batch_size,
                          eval_batch_size=args.eval_batch_size,
                          eval_item_block=args.eval_item_block)
        result = Trainer(model, data, cfg, quiet=True).fit()
        out['epoch_s'] = result.history[0]['train_s']
        out['eval_s'] = result.history[0]['eval_s']
        out['time_s'] = out['epoch_s'] + out['eval_s']
    else:
        out['time_s'] = out['load_s']
    out.update(_peak_mb(args.device))
    return out


def fit_exponent(n, y) -> float:
    """The slope of log y on log n (least squares); nan with fewer than 2 points."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(n, y) if a > 0 and b and b > 0]
    if len(pts) < 2:
        return float('nan')
    x, z = np.array(pts).T
    return float(np.polyfit(x, z, 1)[0])


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed (the viz extra): no PNG')
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for step, rows in result['steps'].items():
        ok = [r for r in rows if 'error' not in r]
        if not ok:
            continue
        n = [r['items'] for r in ok]
        axes[0].loglog(n, [r['time_s'] for r in ok], 'o-', label=step)
        axes[1].loglog(n, [r['peak_rss_mb'] / 1024 for r in ok], 'o-', label=step)
    axes[0].set(xlabel='items', ylabel='seconds', title='time')
    axes[1].set(xlabel='items', ylabel='GiB', title='peak memory (RSS)')
    for ax in axes:
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f'wrote {path}')


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--factors', type=float, nargs='+',
                        default=[0.3, 1, 3, 10, 30])
    parser.add_argument('--steps', nargs='+', default=None,
                        help='load, knn:<backend>, lightgcn, freedom, mambarec')
    parser.add_argument('--image-dim', type=int, default=4096)
    parser.add_argument('--text-dim', type=int, default=384)
    parser.add_argument('--feature-dim', type=int, default=0,
                        help='PCA width before the kNN and the models (0: raw)')
    parser.add_argument('--feature-dtype', default='float32')
    parser.add_argument('--trainable-features', action='store_true',
                        help='train the raw tables (default: frozen)')
    parser.add_argument('--knn-backend', default='faiss',
                        help="the models' kNN graphs")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=2048)
    parser.add_argument('--eval-batch-size', type=int, default=4096)
    parser.add_argument('--eval-item-block', type=int, default=0)
    parser.add_argument('--threads', type=int, default=0)
    parser.add_argument('--timeout', type=float, default=3600)
    parser.add_argument('--max-memory-gb', type=float, default=0,
                        help='skip sizes whose feature tables exceed this (0: 90%% '
                             'of the RAM)')
    parser.add_argument('--fit-from', type=float, default=1.0)
    parser.add_argument('--cache', default=str(Path.home() / '.cache' / 'mambarec_pyg'
                                               / 'scaling'))
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'scaling.json'))
    parser.add_argument('--tiny', action='store_true', help='smoke run')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--factor', type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print('RESULT ' + json.dumps(child(args)))
        return {}
    if args.tiny:
        args.factors, args.image_dim, args.text_dim = [0.01, 0.02], 32, 16
        args.batch_size, args.fit_from = 256, 0.0
    steps = args.steps or ['load', *(f'knn:{b}' for b in STEPS_KNN), *MODELS]
    passthrough = []
    for flag in ('image_dim', 'text_dim', 'feature_dim', 'feature_dtype',
                 'knn_backend', 'device', 'batch_size', 'eval_batch_size',
                 'eval_item_block', 'threads', 'cache'):
        passthrough += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.trainable_features:
        passthrough.append('--trainable-features')
    result = {'settings': {k: v for k, v in vars(args).items()
                           if k not in ('child', 'factor')}, 'steps': {}}
    memory = args.max_memory_gb * 2**30 if args.max_memory_gb else \
        0.9 * os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    for step in steps:
        rows = result['steps'][step] = []
        for factor in sorted(args.factors):
            reason = _does_not_fit(args, factor, memory)
            if reason:
                rows.append({'factor': factor, 'error': reason})
                print(f'{step:12} x{factor:<6g} skipped: {reason}')
                break
            cmd = [sys.executable, __file__, '--child', step, '--factor', str(factor),
                   *passthrough]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True,
                                      timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({'factor': factor, 'error': f'timeout {args.timeout} s'})
                break
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('RESULT ')]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
                rows.append({'factor': factor, 'error': f'exit {proc.returncode}: '
                                                        f'{tail}'})
                break
            row = {'factor': factor, **json.loads(lines[-1][len('RESULT '):])}
            rows.append(row)
            print(f"{step:12} x{factor:<6g} {row['items']:>10,} items "
                  f"{row['time_s']:9.2f} s {row['peak_rss_mb']:9.0f} MB", flush=True)
        ok = [r for r in rows if 'error' not in r and r['factor'] >= args.fit_from]
        result.setdefault('exponents', {})[step] = {
            'time': fit_exponent([r['items'] for r in ok], [r['time_s'] for r in ok]),
            'peak_memory': fit_exponent([r['items'] for r in ok],
                                        [r['peak_rss_mb'] for r in ok])}
    print('\nfitted exponents (time ~ N^a, peak memory ~ N^b):')
    for step, e in result['exponents'].items():
        print(f"  {step:12} a = {e['time']:.2f}  b = {e['peak_memory']:.2f}")
    out = Path(args.out)
    from mambarec_pyg.io import write_json
    write_json(out, result)
    plot(result, out.with_suffix('.png'))
    return result


if __name__ == '__main__':
    main()
