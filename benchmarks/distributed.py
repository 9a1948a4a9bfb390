"""Data-parallel training steps: 1 process against W processes, and the two gradient
synchronisations of :class:`~mambarec_pyg.train.distributed.DistributedStep`
(``'allreduce'``: one bucketed all-reduce after the backward pass; ``'ddp'``:
``DistributedDataParallel``'s hooks during it).

For each model and process count the script times ``--steps`` training steps on the
global batches of an epoch (after ``--warmup``), from the same seed, and reports the
median step time (rank 0's clock; the processes wait for each other in every step),
the epoch time it implies (median x batches per epoch), the communication volume per
step (bytes each process sends into the gradient all-reduce and into the gathers of
the loss) and each process's peak memory. With ``--epoch`` a whole epoch is timed
instead.

    python benchmarks/distributed.py              # Baby scale, CPU, 1 and 2 processes
    python benchmarks/distributed.py --quick      # tiny data, a few steps
    python benchmarks/distributed.py --processes 1 2 4 8 --device cuda  # a GPU node

Processes are started as ``torchrun`` would start them (``RANK``, ``WORLD_SIZE``,
... on 127.0.0.1), one thread each (``--threads``). Results go to
``benchmarks/results/distributed-<device>.json``. Timings on a machine shared with
other work are noise: compare numbers from one run, on an idle machine.

Memory (CPU, Baby scale): each process holds the whole model, graphs and data
(about 1-2 GB for MambaRec), so ``--processes 1 2`` needs a few GB in all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / 'results'
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _peak_mb(device: torch.device) -> float:
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Volume:
    """Counts the bytes this process puts into collectives during a step."""

    def __init__(self):
        self.gather = 0
        self.gradients = 0

    def install(self) -> None:
        from mambarec_pyg.train import distributed
        volume = self
        original = distributed._GatherRows.forward

        def forward(ctx, rows, sizes, rank, group):
            volume.gather += max(sizes) * rows.shape[1:].numel() * rows.element_size()
            return original(ctx, rows, sizes, rank, group)

        distributed._GatherRows.forward = staticmethod(forward)

    def gradient_bytes(self, step) -> int:
        return sum(p.numel() * p.element_size() for p in step.params
                   if p.grad is not None)


def child(args) -> None:
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.data.index import training_index
    from mambarec_pyg.data.sampling import TrainingPairs
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.train.distributed import (DistributedStep, detect_launch,
                                                init_distributed)
    from mambarec_pyg.train.experiment import build_model
    from mambarec_pyg.train.step import TrainingStep
    from mambarec_pyg.train.trainer import make_optimizer
    from mambarec_pyg.utils import resolve_device

    launch = detect_launch()
    world = launch.world_size if launch else 1
    ctx = init_distributed(launch, args.device) if world > 1 else None
    device = ctx.device if ctx else resolve_device(args.device)
    rank = ctx.rank if ctx else 0
    data = synthetic_dataset(args.preset, seed=0)
    pairs = TrainingPairs(training_index(data))
    num_batches = pairs.num_batches(args.batch_size)
    volume = _Volume()
    if ctx:
        volume.install()
    out = []
    syncs = args.sync if world > 1 else ['single']
    for name in args.models:
        for sync in syncs:
            torch.manual_seed(0)
            model = build_model(data, get_config_class(name)()).to(device)
            opt = make_optimizer(model.parameters(), lr=1e-3)
            step = (TrainingStep(model, opt) if sync == 'single' else
                    DistributedStep(model, opt, ctx, sync=sync))
            model.train()
            model.on_epoch_start(0)
            g = torch.Generator().manual_seed(0)
            batches = pairs.epoch(args.batch_size, g, device)
            count = num_batches if args.epoch else min(args.warmup + args.steps,
                                                        num_batches)
            times = []
            gather_bytes = grad_bytes = 0
            for i in range(count):
                batch = next(batches)
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                before = volume.gather
                parts = step.forward(batch)
                step.update(parts)
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
                gather_bytes = volume.gather - before
                grad_bytes = volume.gradient_bytes(step) if sync != 'single' else 0
            timed = times if args.epoch else times[args.warmup:] or times
            row = {'model': name, 'processes': world, 'sync': sync,
                   'median_step_s': statistics.median(timed),
                   'epoch_s': (sum(times) if args.epoch else
                               statistics.median(timed) * num_batches),
                   'epoch_measured': bool(args.epoch), 'steps_timed': len(timed),
                   'batches_per_epoch': num_batches,
                   'gradient_allreduce_mb_per_step': grad_bytes / 2**20,
                   'gather_mb_per_step': gather_bytes / 2**20,
                   'peak_memory_mb': _peak_mb(device)}
            out.append(row)
            del model, opt, step
    if ctx:
        import torch.distributed as dist
        gathered = [None] * world
        dist.all_gather_object(gathered, [r['peak_memory_mb'] for r in out])
        for k, row in enumerate(out):
            row['peak_memory_mb_per_process'] = [g[k] for g in gathered]
        ctx.close()
    if rank == 0:
        Path(args.child_out).write_text(json.dumps(out))


def run_group(args, world: int) -> list:
    port = _free_port()
    tmp = RESULTS / f'.distributed-{os.getpid()}-{world}.json'
    cmd = [sys.executable, __file__, '--child', str(tmp), '--preset', args.preset,
           '--batch-size', str(args.batch_size), '--steps', str(args.steps),
           '--warmup', str(args.warmup), '--threads', str(args.threads),
           '--device', args.device, '--models', *args.models, '--sync', *args.sync]
    if args.epoch:
        cmd.append('--epoch')
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                   OMP_NUM_THREADS=str(args.threads),
                   PYTHONPATH=os.pathsep.join([str(ROOT),
                                               os.environ.get('PYTHONPATH', '')]))
        if world == 1:
            for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
                env.pop(key)
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f'{world} process(es): exit codes {codes}')
    rows = json.loads(tmp.read_text())
    tmp.unlink()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--preset', default='baby', help='synthetic preset (default baby)')
    p.add_argument('--models', nargs='+', default=['mambarec', 'freedom', 'lightgcn'])
    p.add_argument('--processes', nargs='+', type=int, default=[1, 2])
    p.add_argument('--sync', nargs='+', default=['allreduce', 'ddp'],
                   choices=['allreduce', 'ddp'])
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=1, help='torch threads per process')
    p.add_argument('--device', default='cpu', help="'cpu', 'cuda' or 'auto'")
    p.add_argument('--epoch', action='store_true', help='time a whole epoch')
    p.add_argument('--quick', action='store_true',
                   help='tiny data, batch 128, 3 steps (a smoke test)')
    p.add_argument('--child', metavar='OUT', dest='child_out', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.preset, args.batch_size, args.steps, args.warmup = 'tiny', 128, 3, 1
    if args.child_out:
        child(args)
        return
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for world in args.processes:
        rows += run_group(args, world)
    base = {r['model']: r['median_step_s'] for r in rows if r['processes'] == 1}
    print(f'{"model":10s} {"procs":>5s} {"sync":>9s} {"step ms":>9s} {"epoch s":>8s} '
          f'{"vs 1":>6s} {"grad MB":>8s} {"gather MB":>9s} {"peak MB":>8s}')
    for r in rows:
        ratio = base.get(r['model'], float('nan')) / r['median_step_s']
        print(f'{r["model"]:10s} {r["processes"]:5d} {r["sync"]:>9s} '
              f'{1e3 * r["median_step_s"]:9.1f} {r["epoch_s"]:8.1f} {ratio:6.2f} '
              f'{r["gradient_allreduce_mb_per_step"]:8.1f} '
              f'{r["gather_mb_per_step"]:9.3f} {r["peak_memory_mb"]:8.0f}')
    record = {'args': {k: v for k, v in vars(args).items() if k != 'child_out'},
              'torch': torch.__version__, 'machine': platform.machine(),
              'cpus': os.cpu_count(), 'rows': rows}
    path = RESULTS / f'distributed-{args.device}.json'
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    print(f'written {path}')


if __name__ == '__main__':
    main()
