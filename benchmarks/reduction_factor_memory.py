"""Parameters, training-step memory and step time against the reduction factor r.

The paper (Section 4.3, Fig. 5) claims that the dimensionality reduction saves memory.
In the reference variant r sets the hidden width ``D_v / r`` of the two-stage visual
projection ``4096 -> 4096/r -> 64``; in the paper variant it sets the common projected
width ``d' = floor(min(D_v, D_t) / r)``. For r in 1, 2, 4, 8, 16, 32 at Amazon-Baby
scale this script measures, each in a fresh process:

* the number of trainable parameters (with and without the raw feature tables, which
  the released model trains and which dominate the count),
* the peak memory of training steps (CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; CPU: the peak resident set size during the steps,
  ``VmHWM`` after resetting it through ``/proc/self/clear_refs``, falling back to
  ``ru_maxrss`` of the whole process),
* the median step time (forward, all losses, backward, fused Adam).

Both computations of the two-stage projection are measured: ``fused`` (the composed
affine map ``X (W_2 W_1)^T``, the library default: the intermediate ``[N, D_v/r]``
activation is never formed and the cost is ``N D_v d`` whatever r is) and ``plain``
(``Lin(Lin(X))`` as released: an ``[N, D_v / r]`` intermediate and ``N D_v D_v / r``
multiply-adds). With the fused map r changes the parameter count but hardly the
FLOPs or the activation memory, so a memory saving claimed for r should be read
against the ``plain`` rows.

    python benchmarks/reduction_factor_memory.py                  # CPU
    python benchmarks/reduction_factor_memory.py --device cuda
    python benchmarks/reduction_factor_memory.py --variant paper

Writes ``benchmarks/results/reduction_factor-<variant>-<device>.{json,md,png}``
(the plot needs matplotlib; without it a message says so and the rest is written).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / 'results'
FACTORS = (1, 2, 4, 8, 16, 32)


def _reset_peak_rss() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _peak_rss_mb(reset_worked: bool) -> float:
    if reset_worked:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    warnings.filterwarnings('ignore')
    if args.threads:
        torch.set_num_threads(args.threads)
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.data.sampling import BPRBatch
    from mambarec_pyg.models.mambarec import MambaRec, MambaRecConfig
    from mambarec_pyg.train.trainer import make_optimizer

    device = torch.device(args.device)
    data = synthetic_dataset(args.dataset, seed=0)
    config = MambaRecConfig(variant=args.variant, reduction_factor=args.r,
                            compose_projection=args.mode == 'fused')
    torch.manual_seed(0)
    model = MambaRec(MambaRec.prepare(data, config), config).to(device).train()
    opt = make_optimizer(model.parameters(), lr=1e-3)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tables = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith('features.'))
    widths = {m: (model.projections[m].hidden_features, model.projections[m].out_features)
              for m in model.modalities}
    g = torch.Generator().manual_seed(0)
    ui = data['user', 'interacts', 'item'].edge_index

    def batch():
        idx = torch.randint(0, ui.size(1), (args.batch_size, ), generator=g)
        neg = torch.randint(0, model.num_items, (args.batch_size, ), generator=g)
        return ui[0, idx].to(device), ui[1, idx].to(device), neg.to(device)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        state_mb = torch.cuda.memory_allocated(device) / 2**20
    else:
        reset = _reset_peak_rss()
        with open('/proc/self/status') as f:
            state_mb = next(int(line.split()[1]) / 1024 for line in f
                            if line.startswith('VmRSS:'))
    times = []
    for i in range(args.warmup + args.steps):
        users, pos, neg = batch()
        sync()
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model.loss(BPRBatch(users, pos, neg, args.batch_size))['total'].backward()
        opt.step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == 'cuda'
            else _peak_rss_mb(reset))
    return {'r': args.r, 'mode': args.mode, 'params': params,
            'params_without_feature_tables': params - tables, 'widths': widths,
            'memory_before_steps_mb': state_mb, 'peak_memory_mb': peak,
            'median_step_s': statistics.median(times)}


def table(rows, device) -> str:
    kind = 'allocated' if device.startswith('cuda') else 'RSS'
    lines = [f'| r | projection | params (all) | params (w/o feature tables) | '
             f'memory before steps (MB, {kind}) | peak step memory (MB, {kind}) | '
             f'median step (ms) |',
             '|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f"| {row['r']} | {row['mode']} | {row['params']:,} | "
                     f"{row['params_without_feature_tables']:,} | "
                     f"{row['memory_before_steps_mb']:.0f} | {row['peak_memory_mb']:.0f} | "
                     f"{row['median_step_s'] * 1e3:.0f} |")
    return '\n'.join(lines) + '\n'


def plot(rows, path: Path, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('  (matplotlib is not installed: no plot; pip install matplotlib)')
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mode, style in (('fused', 'o-'), ('plain', 's--')):
        sel = [r for r in rows if r['mode'] == mode]
        if not sel:
            continue
        rs = [r['r'] for r in sel]
        axes[0].plot(rs, [r['params_without_feature_tables'] / 1e6 for r in sel], style,
                     label=mode)
        axes[1].plot(rs, [r['peak_memory_mb'] for r in sel], style, label=mode)
        axes[2].plot(rs, [r['median_step_s'] * 1e3 for r in sel], style, label=mode)
    for ax, ylabel in zip(axes, ('parameters w/o feature tables (M)',
                                 'peak step memory (MB)', 'median step (ms)')):
        ax.set_xscale('log', base=2)
        ax.set_xlabel('reduction factor r')
        ax.set_ylabel(ylabel)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    from mambarec_pyg.io import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--variant', default='reference', choices=('reference', 'paper'))
    p.add_argument('--dataset', default='baby')
    p.add_argument('--factors', type=int, nargs='*', default=list(FACTORS))
    p.add_argument('--modes', nargs='*', default=['fused', 'plain'],
                   choices=('fused', 'plain'))
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--threads', type=int, default=0)
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--r', type=int, help=argparse.SUPPRESS)
    p.add_argument('--mode', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device available')
    rows = []
    for r in args.factors:
        for mode in args.modes:
            cmd = [sys.executable, __file__, '--child', '--r', str(r), '--mode', mode,
                   '--device', args.device, '--variant', args.variant,
                   '--dataset', args.dataset, '--steps', str(args.steps),
                   '--warmup', str(args.warmup), '--batch-size', str(args.batch_size),
                   '--threads', str(args.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"r={r:2d} {mode:5s} params {row['params']:>11,} "
                  f"(w/o tables {row['params_without_feature_tables']:>10,})  "
                  f"peak {row['peak_memory_mb']:7.0f} MB  "
                  f"step {row['median_step_s'] * 1e3:7.0f} ms", flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mambarec_pyg.io import atomic_write_text, write_json
    stem = RESULTS / f'reduction_factor-{args.variant}-{args.device.replace(":", "")}'
    info = {'device': args.device, 'variant': args.variant, 'dataset': args.dataset,
            'batch_size': args.batch_size, 'torch': torch.__version__,
            'device_name': (torch.cuda.get_device_name(args.device)
                            if args.device.startswith('cuda') else 'cpu'),
            'rows': rows}
    write_json(stem.with_suffix('.json'), info)
    md = (f'# Reduction factor r: {args.variant} variant, {args.dataset}, '
          f'{info["device_name"]}\n\n' + table(rows, args.device))
    atomic_write_text(stem.with_suffix('.md'), md)
    plot(rows, stem.with_suffix('.png'),
         f'MambaRec ({args.variant}), {args.dataset}, {info["device_name"]}')
    print(md)
    print(f'written {stem}.json, .md, .png')


if __name__ == '__main__':
    main()
