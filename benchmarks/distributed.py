"""Data-parallel training steps: 1 process against W processes, and the two gradient
synchronisations of :class:`~mambarec_pyg.train.distributed.DistributedStep`
(``'allreduce'``: one bucketed all-reduce after the backward pass; ``'ddp'``:
``DistributedDataParallel``'s hooks during it).

For each model and process count the script times ``--steps`` training steps on the
global batches of an epoch (after ``--warmup``), from the same seed, and reports the
median step time (rank 0's clock; the processes wait for each other in every step),
the epoch time it implies (median x batches per epoch), the communication volume per
step (bytes each process sends into the gradient all-reduce and into the gathers of
the loss) and the process's peak memory so far (the models run one after another in
each process, so this is a running maximum: ``--memory`` gives each model's own
peak). With ``--epoch`` a whole epoch is timed instead.

    python benchmarks/distributed.py              # Baby scale, CPU, 1 and 2 processes
    python benchmarks/distributed.py --quick      # tiny data, a few steps
    python benchmarks/distributed.py --processes 1 2 4 8 --device cuda  # a GPU node

Processes are started as ``torchrun`` would start them (``RANK``, ``WORLD_SIZE``,
... on 127.0.0.1), one thread each (``--threads``). Results go to
``benchmarks/results/distributed-<device>.json`` (``--results`` for another
folder). Timings on a machine shared with other work are noise: compare numbers
from one run, on an idle machine.

Memory (CPU, Baby scale): each process holds the whole model, graphs and data
(about 1-2 GB for MambaRec), so ``--processes 1 2`` needs a few GB in all.

Two more modes, each in fresh processes:

* ``--single-path``: the speed of the one-process path with and without the
  training-step seam the distributed code plugs into: on the same global batches,
  alternately, the trainer's step (:class:`~mambarec_pyg.train.step.TrainingStep`:
  ``forward``, the finiteness check through ``all_finite``, ``update``) and the
  plain loop it replaced (``model.loss``, ``torch.isfinite``, backward, Adam);
  the ratio of the median step times (about 1 means the seam costs nothing);
* ``--memory``: the peak memory of training steps on one process (the same on each
  process of a data-parallel run: everything is replicated) against the formula
  of the README's "More than one device" section (:func:`memory_formula`), term by
  term: parameters with their gradients and Adam moments, graphs, data, and the
  activations (the rest, reported as the factor alpha of ``(U + I) d``).

    python benchmarks/distributed.py --single-path
    python benchmarks/distributed.py --memory
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


def memory_formula(num_users: int, num_items: int, widths, d: int,
                   graph_nonzeros: int, dense_params: int = 0,
                   trainable_features: bool = False, alpha: float = 0.0,
                   value_bytes: int = 4) -> dict:
    """The memory of one training process, in bytes, by term (the README's formula):

    * ``params``: P = (U + I) d [ID embeddings] + I sum(f) [the feature tables, when
      trained] + P0 [dense layers, independent of U and I]; each held 4 times --
      weights, gradients, Adam's two moments -- at ``value_bytes`` each;
    * ``graphs``: ``graph_nonzeros`` stored entries of the sparse propagation graphs
      (CSR: an int64 column index and a value each), 2 |R| for the user-item graph
      plus k I per modality for the item-item kNN graphs;
    * ``features``: the data's feature tables, I sum(f) values;
    * ``activations``: alpha (U + I) d values (what the forward pass keeps for the
      backward pass; alpha depends on the model's layers, measured by ``--memory``).
    """
    features = num_items * sum(widths)
    params = (num_users + num_items) * d + (features if trainable_features else 0) \
        + dense_params
    out = {'params': 4 * params * value_bytes,
           'graphs': graph_nonzeros * (8 + value_bytes),
           'features': features * value_bytes,
           'activations': alpha * (num_users + num_items) * d * value_bytes}
    out['total'] = sum(out.values())
    return out


def _sparse_nonzeros(model) -> int:
    """Stored entries of the model's sparse buffers and graph tensors."""
    seen, total = set(), 0
    tensors = list(model.buffers())
    for module in model.modules():
        tensors += [v for v in vars(module).values() if isinstance(v, torch.Tensor)]
    for t in tensors:
        if id(t) in seen or t.layout == torch.strided:
            continue
        seen.add(id(t))
        total += int(t._nnz() if t.is_sparse else t.values().numel())
    return total


def _rss_mb() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def memory_child(args) -> None:
    """One model's peak memory against :func:`memory_formula` (one process)."""
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.data.index import training_index
    from mambarec_pyg.data.sampling import TrainingPairs
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.train.experiment import build_model
    from mambarec_pyg.train.trainer import make_optimizer
    name = args.models[0]
    before = _rss_mb()
    data = synthetic_dataset(args.preset, seed=0)
    config = get_config_class(name)()
    model = build_model(data, config)
    opt = make_optimizer(model.parameters(), lr=1e-3)
    pairs = TrainingPairs(training_index(data))
    model.train()
    model.on_epoch_start(0)
    batches = pairs.epoch(args.batch_size, torch.Generator().manual_seed(0))
    for _ in range(min(args.steps, pairs.num_batches(args.batch_size))):
        parts = model.loss(next(batches))
        opt.zero_grad(set_to_none=True)
        parts['total'].backward()
        opt.step()
    peak = _peak_mb(torch.device('cpu'))
    U, I = int(data['user'].num_nodes), int(data['item'].num_nodes)
    widths = [int(data['item'][m].size(1)) for m in ('image', 'text')
              if m in data['item']]
    d = int(getattr(config, 'embedding_size', 64))
    params = [p for p in model.parameters() if p.requires_grad]
    features = getattr(config, 'trainable_features', False)
    scaled = sum(p.numel() for p in params if p.dim() and p.size(0) in (U, I))
    dense = sum(p.numel() for p in params) - scaled
    static = memory_formula(U, I, widths, d, _sparse_nonzeros(model), dense, features)
    measured = (peak - before) * 2**20
    alpha = (measured - static['total']) / ((U + I) * d * 4)
    row = {'model': name, 'num_users': U, 'num_items': I, 'widths': widths, 'd': d,
           'trainable_params': sum(p.numel() for p in params),
           'params_scaling_with_users_items': scaled,
           'formula_params_scaling': (U + I) * d + (I * sum(widths) if features
                                                     else 0),
           'graph_nonzeros': _sparse_nonzeros(model), 'formula_mb': {
               k: v / 2**20 for k, v in static.items()},
           'measured_peak_mb': peak - before, 'alpha': alpha}
    Path(args.child_out).write_text(json.dumps(row))


def single_path_child(args) -> None:
    """The trainer's step against the plain loop, alternately (one process)."""
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.data.index import training_index
    from mambarec_pyg.data.sampling import TrainingPairs
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.train.experiment import build_model
    from mambarec_pyg.train.step import TrainingStep
    from mambarec_pyg.train.trainer import make_optimizer
    data = synthetic_dataset(args.preset, seed=0)
    pairs = TrainingPairs(training_index(data))
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(data, get_config_class(name)())
        opt = make_optimizer(model.parameters(), lr=1e-3)
        step = TrainingStep(model, opt)
        model.train()
        model.on_epoch_start(0)
        batches = pairs.epoch(args.batch_size, torch.Generator().manual_seed(0))
        count = min(2 * (args.warmup + args.steps), pairs.num_batches(args.batch_size))
        times = {'seam': [], 'plain': []}
        for i in range(count):
            batch = next(batches)
            t0 = time.perf_counter()
            if i % 2 == 0:  # the trainer's path
                parts = step.forward(batch)
                values = torch.stack([v.detach().double().reshape(())
                                      for v in parts.values()])
                assert step.all_finite(values)
                step.update(parts)
                kind = 'seam'
            else:  # the plain loop
                parts = model.loss(batch)
                values = torch.stack([v.detach().double().reshape(())
                                      for v in parts.values()])
                assert bool(torch.isfinite(values).all())
                opt.zero_grad(set_to_none=True)
                parts['total'].backward()
                opt.step()
                kind = 'plain'
            times[kind].append(time.perf_counter() - t0)
        seam = statistics.median(times['seam'][args.warmup:] or times['seam'])
        plain = statistics.median(times['plain'][args.warmup:] or times['plain'])
        rows.append({'model': name, 'seam_step_s': seam, 'plain_step_s': plain,
                     'ratio': seam / plain, 'steps_each': len(times['seam'])})
    Path(args.child_out).write_text(json.dumps(rows))


def _one_process(args, mode: str, models) -> object:
    tmp = Path(args.results) / f'.distributed-{mode}-{os.getpid()}.json'
    cmd = [sys.executable, __file__, f'--{mode}-child', str(tmp), '--preset',
           args.preset, '--batch-size', str(args.batch_size), '--steps',
           str(args.steps), '--warmup', str(args.warmup), '--threads',
           str(args.threads), '--models', *models]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE'):
        env.pop(key, None)
    code = subprocess.call(cmd, env=env)
    if code:
        raise SystemExit(f'{mode}: exit code {code}')
    out = json.loads(tmp.read_text())
    tmp.unlink()
    return out


def _write(record: dict, name: str, folder) -> None:
    path = Path(folder) / name
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    print(f'written {path}')


def main_single_path(args) -> None:
    rows = _one_process(args, 'single-path', args.models)
    print(f'{"model":10s} {"trainer step ms":>16s} {"plain loop ms":>14s} {"ratio":>6s}')
    for r in rows:
        print(f'{r["model"]:10s} {1e3 * r["seam_step_s"]:16.1f} '
              f'{1e3 * r["plain_step_s"]:14.1f} {r["ratio"]:6.3f}')
    _write({'args': _plain_args(args), 'torch': torch.__version__, 'rows': rows},
           'distributed-single-path.json', args.results)


def main_memory(args) -> None:
    rows = [_one_process(args, 'memory', [name]) for name in args.models]
    print(f'{"model":10s} {"params":>8s} {"graphs":>8s} {"features":>8s} '
          f'{"formula":>8s} {"measured":>9s} {"alpha":>7s}  (MB; alpha: activations '
          f'in units of (U+I)d)')
    for r in rows:
        f = r['formula_mb']
        print(f'{r["model"]:10s} {f["params"]:8.1f} {f["graphs"]:8.1f} '
              f'{f["features"]:8.1f} {f["total"]:8.1f} {r["measured_peak_mb"]:9.1f} '
              f'{r["alpha"]:7.1f}')
    _write({'args': _plain_args(args), 'torch': torch.__version__, 'rows': rows},
           'distributed-memory.json', args.results)


def _plain_args(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.endswith('child_out')}


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
    tmp = Path(args.results) / f'.distributed-{os.getpid()}-{world}.json'
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
    p.add_argument('--results', default=str(RESULTS),
                   help='folder of the results (default benchmarks/results)')
    p.add_argument('--single-path', action='store_true',
                   help="one process: the trainer's step against the plain loop")
    p.add_argument('--memory', action='store_true',
                   help="one process: peak memory against the README's formula")
    p.add_argument('--child', metavar='OUT', dest='child_out', help=argparse.SUPPRESS)
    p.add_argument('--single-path-child', metavar='OUT', dest='single_path_child_out',
                   help=argparse.SUPPRESS)
    p.add_argument('--memory-child', metavar='OUT', dest='memory_child_out',
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.preset, args.batch_size, args.steps, args.warmup = 'tiny', 128, 3, 1
    if args.child_out:
        child(args)
        return
    if args.single_path_child_out:
        args.child_out = args.single_path_child_out
        single_path_child(args)
        return
    if args.memory_child_out:
        args.child_out = args.memory_child_out
        memory_child(args)
        return
    Path(args.results).mkdir(parents=True, exist_ok=True)
    if args.single_path:
        main_single_path(args)
        return
    if args.memory:
        main_memory(args)
        return
    rows = []
    for world in args.processes:
        rows += run_group(args, world)
    base = {r['model']: r['median_step_s'] for r in rows if r['processes'] == 1}
    print(f'{"model":10s} {"procs":>5s} {"sync":>9s} {"step ms":>9s} {"epoch s":>8s} '
          f'{"vs 1":>6s} {"grad MB":>8s} {"gather MB":>9s} {"max RSS":>8s}')
    for r in rows:
        ratio = base.get(r['model'], float('nan')) / r['median_step_s']
        print(f'{r["model"]:10s} {r["processes"]:5d} {r["sync"]:>9s} '
              f'{1e3 * r["median_step_s"]:9.1f} {r["epoch_s"]:8.1f} {ratio:6.2f} '
              f'{r["gradient_allreduce_mb_per_step"]:8.1f} '
              f'{r["gather_mb_per_step"]:9.3f} {r["peak_memory_mb"]:8.0f}')
    record = {'args': _plain_args(args),
              'torch': torch.__version__, 'machine': platform.machine(),
              'cpus': os.cpu_count(), 'rows': rows}
    _write(record, f'distributed-{args.device}.json', args.results)


if __name__ == '__main__':
    main()
