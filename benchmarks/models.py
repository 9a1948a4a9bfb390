"""Every registered model at Baby scale: training-epoch time, evaluation time and peak
memory, on the CPU and on CUDA when present.

Each model runs in a fresh process (so its peak memory is its own) on the ``baby``
synthetic preset (19,445 users, 7,050 items, ~119k training pairs, 4096-d image and
384-d text features), with its default configuration and protocol and batch 2048:

* ``build_s``: the model built with its graphs (computed once into the dataset's
  processed directory, which later runs and the timed run read);
* ``epoch_s``: one training epoch through :class:`~mambarec_pyg.train.Trainer`
  (``on_epoch_start``, sampling, forward, loss, backward, Adam for every batch), the
  median of ``--epochs`` epochs;
* ``eval_s``: one full evaluation of the valid split (the eval-mode forward pass once,
  then ranking all items for every user), the median of ``--repeats``;
* ``peak_mb``: the process's peak RSS on the CPU, ``max_memory_allocated`` on CUDA.

Targets on a 2-core CPU: every epoch at most 30 s, every evaluation at most 2 s.
Writes ``benchmarks/results/models-<device>.json`` and ``.md``.

    python benchmarks/models.py [--device cpu|cuda] [--models bpr lightgcn ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / 'results'
EPOCH_TARGET_S = 30.0
EVAL_TARGET_S = 2.0


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def child(args) -> dict:
    """One model, measured in this process."""
    warnings.filterwarnings('ignore')
    from mambarec_pyg.config import TrainConfig
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.train.evaluate import Evaluator
    from mambarec_pyg.train.experiment import build_model
    from mambarec_pyg.train.trainer import Trainer
    from mambarec_pyg.utils import resolve_device, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = synthetic_dataset(args.preset, seed=0)
    seed_everything(999)
    t = time.perf_counter()
    model = build_model(data, get_config_class(args.model)())
    build_s = time.perf_counter() - t
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    epoch_s = []
    if model.trainable:
        cfg = TrainConfig(device=str(device), max_epochs=args.epochs, patience=10**6,
                          batch_size=2048, num_threads=args.threads)
        result = Trainer(model, data, cfg, quiet=True).fit()
        epoch_s = [h['train_s'] for h in result.history]
    model.to(device)
    ev = Evaluator(data, device=device)
    ev(model, 'valid')  # builds the split structures
    eval_s = []
    for _ in range(args.repeats):
        _sync(device)
        t = time.perf_counter()
        ev(model, 'valid')
        _sync(device)
        eval_s.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda'
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {'model': args.model, 'build_s': build_s, 'epoch_s': epoch_s,
            'epoch_median_s': statistics.median(epoch_s) if epoch_s else None,
            'eval_s': eval_s, 'eval_median_s': statistics.median(eval_s),
            'peak_mb': peak, 'trainable_parameters': params,
            'threads': torch.get_num_threads()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--preset', default='baby')
    p.add_argument('--models', nargs='*', help='default: every registered model')
    p.add_argument('--epochs', type=int, default=2, help='timed epochs per model')
    p.add_argument('--repeats', type=int, default=3, help='timed evaluations')
    p.add_argument('--threads', type=int, default=0,
                   help='torch threads (0: the default)')
    p.add_argument('--model', help=argparse.SUPPRESS)
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--out', help='JSON path (default benchmarks/results/'
                   'models-<device>.json)')
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device available')
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.io import atomic_write_text, write_json
    from mambarec_pyg.models import list_models
    from mambarec_pyg.models.registry import PAPER_ORDER
    synthetic_dataset(args.preset, seed=0)  # generate once, outside the timings
    models = args.models or [m for m in list_models() if m in PAPER_ORDER]
    rows = []
    for name in models:
        cmd = [sys.executable, __file__, '--child', '--model', name, '--device',
               args.device, '--preset', args.preset, '--epochs', str(args.epochs),
               '--repeats', str(args.repeats), '--threads', str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            tail = out.stderr.strip().splitlines()[-1:] or ['(no output)']
            print(f'{name:12s} failed: {tail[0]}', flush=True)
            rows.append({'model': name, 'error': tail[0]})
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        epoch = row['epoch_median_s']
        print(f"{name:12s} epoch {'-' if epoch is None else f'{epoch:6.1f} s'}  "
              f"eval {row['eval_median_s']:5.2f} s  peak {row['peak_mb']:6.0f} MB  "
              f"build {row['build_s']:5.1f} s", flush=True)
    device_name = (torch.cuda.get_device_name(args.device)
                   if args.device.startswith('cuda') else
                   platform.processor() or platform.machine())
    result = {'device': args.device, 'device_name': device_name,
              'torch': torch.__version__, 'preset': args.preset,
              'epochs': args.epochs, 'repeats': args.repeats,
              'targets': {'epoch_s': EPOCH_TARGET_S, 'eval_s': EVAL_TARGET_S},
              'models': rows}
    path = Path(args.out) if args.out else RESULTS / f'models-{args.device}.json'
    write_json(path, result)
    lines = ['| model | training epoch (s) | evaluation (s) | peak memory (MB) | '
             'trainable parameters |', '| --- | --- | --- | --- | --- |']
    for r in rows:
        if 'error' in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | |")
            continue
        epoch = '-' if r['epoch_median_s'] is None else f"{r['epoch_median_s']:.1f}"
        lines.append(f"| {r['model']} | {epoch} | {r['eval_median_s']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['trainable_parameters'] / 1e6:.2f} M |")
    atomic_write_text(path.with_suffix('.md'), '\n'.join(lines) + '\n')
    print(f'wrote {path} and {path.with_suffix(".md")}')
    return result


if __name__ == '__main__':
    main()
