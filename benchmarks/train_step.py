"""Time one MambaRec training step at Amazon-Baby scale.

A step is what the trainer does per batch: ``zero_grad``, ``model.loss`` (one
train-mode forward pass and every loss term), ``backward`` and a fused Adam step. The
script reports the median over ``--steps`` steps after ``--warmup`` steps, split into
forward / backward / optimizer, the forward + backward time of the model's parts
measured one at a time, the peak memory of the process (CPU: peak RSS; CUDA: peak
allocated), and the peak-memory overhead of the MMD term (the same run without it, in
a fresh process).

Data: the synthetic ``baby`` preset (19,445 users, 7,050 items, 4096-d image and
384-d text features, about 119k training interactions), generated once into the
cache. Results go to ``benchmarks/results/train_step-<device>.json``.

    python benchmarks/train_step.py                 # CPU
    python benchmarks/train_step.py --device cuda
    python benchmarks/train_step.py --config propagation=pyg fusion_rows=all

Other processes on the machine disturb the timings; compare medians, run twice.
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


def _parse_overrides(items):
    out = {}
    for item in items or ():
        key, _, value = item.partition('=')
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def build(args, device):
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.models.mambarec import MambaRec, MambaRecConfig
    from mambarec_pyg.train.trainer import make_optimizer

    data = synthetic_dataset(args.dataset, seed=0)
    config = MambaRecConfig(**_parse_overrides(args.config))
    torch.manual_seed(0)
    t = time.perf_counter()
    # the graphs come from the dataset's processed directory after the first run
    model = MambaRec(MambaRec.prepare(data, config), config).to(device).train()
    build_s = time.perf_counter() - t
    opt = make_optimizer(model.parameters(), lr=1e-3)
    return data, model, opt, build_s


def batches(data, batch_size, device, seed=0):
    from mambarec_pyg.data.sampling import BPRBatch
    edge_index = data['user', 'interacts', 'item'].edge_index
    g = torch.Generator().manual_seed(seed)
    num_items = data['item'].num_nodes
    while True:
        idx = torch.randint(0, edge_index.size(1), (batch_size, ), generator=g)
        neg = torch.randint(0, num_items, (batch_size, ), generator=g)
        yield BPRBatch(edge_index[0, idx].to(device), edge_index[1, idx].to(device),
                       neg.to(device), batch_size)


def time_steps(model, opt, data, args, device):
    timer = Timer(device)
    it = batches(data, args.batch_size, device)
    rows = []
    for i in range(args.warmup + args.steps):
        batch = next(it)
        t0 = timer.now()
        opt.zero_grad(set_to_none=True)
        parts = model.loss(batch)
        t1 = timer.now()
        parts['total'].backward()
        t2 = timer.now()
        opt.step()
        t3 = timer.now()
        if i >= args.warmup:
            rows.append({'forward_s': t1 - t0, 'backward_s': t2 - t1,
                         'optimizer_s': t3 - t2, 'step_s': t3 - t0})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}, \
        [r['step_s'] for r in rows]


def time_parts(model, args, device, reps=5):
    """Forward + backward of each part alone (medians); they overlap with nothing, so
    their sum is only roughly the step."""
    from mambarec_pyg.nn.losses import info_nce, mmd_loss
    timer = Timer(device)
    out = {}

    def run(name, fn):
        ts = []
        for _ in range(reps + 1):
            model.zero_grad(set_to_none=True)
            t = timer.now()
            fn()
            ts.append(timer.now() - t)
        out[name] = statistics.median(ts[1:])

    def backward(y):
        y.backward(torch.ones_like(y))

    for m in model.modalities:
        x = model.features[m]
        run(f'projection[{m}]', lambda: backward(model.projections[m](x)))
        if model.dreams is not None:
            f = model.projections[m](x).detach().requires_grad_()
            run(f'dream[{m}]', lambda: backward(model.dreams[m](f)))
    run('content view (LightGCN)', lambda: backward(model._content()))
    e = model.item_embedding.weight.detach().clone().requires_grad_()
    run('modality view (kNN + item->user), one modality',
        lambda: backward(torch.cat(model._modality_view(model.modalities[0], e))))
    B, d = args.batch_size, model.config.embedding_size
    a = torch.randn(B, d, device=device, requires_grad=True)
    b = torch.randn(B, d, device=device, requires_grad=True)
    run('info_nce x2 (B x B)', lambda: (info_nce(a, b, 0.2) + info_nce(b, a, 0.2))
        .backward())
    run('mmd (B x B)', lambda: mmd_loss(torch.nn.functional.normalize(a, dim=1),
                                        torch.nn.functional.normalize(b, dim=1),
                                        model.config.mmd_bandwidth).backward())
    model.zero_grad(set_to_none=True)
    return out


def profile_ops(model, opt, data, args, device, rows=25):
    from torch.profiler import ProfilerActivity, profile
    it = batches(data, args.batch_size, device, seed=1)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if device.type == 'cuda' else [])
    with profile(activities=acts, record_shapes=True) as prof:
        for _ in range(2):
            opt.zero_grad(set_to_none=True)
            model.loss(next(it))['total'].backward()
            opt.step()
    key = 'self_cuda_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by=key, row_limit=rows, max_name_column_width=40,
        max_shapes_column_width=60)


def child(args) -> dict:
    """One measurement in this process (``--child``)."""
    warnings.filterwarnings('ignore')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.no_mmd:
        import mambarec_pyg.models.mambarec as mambarec
        mambarec.mmd_loss = lambda x, y, bandwidth: (x * 0).sum() + (y * 0).sum()
    data, model, opt, build_s = build(args, device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    medians, steps = time_steps(model, opt, data, args, device)
    result = {'build_s': build_s, 'median': medians, 'steps_s': steps,
              'peak_memory_mb': peak_memory_mb(device)}
    if not args.no_parts:
        result['parts_fwd_bwd_s'] = time_parts(model, args, device)
    if args.profile:
        result['profile'] = profile_ops(model, opt, data, args, device)
    return result


def run_child(args, *extra) -> dict:
    cmd = [sys.executable, __file__, '--child', '--device', args.device,
           '--steps', str(args.steps), '--warmup', str(args.warmup),
           '--batch-size', str(args.batch_size), '--dataset', args.dataset,
           '--threads', str(args.threads or 0), *extra]
    if args.config:
        cmd += ['--config', *args.config]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu')
    p.add_argument('--dataset', default='baby')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=2048)
    p.add_argument('--threads', type=int, default=0,
                   help='torch.set_num_threads (0: leave the default)')
    p.add_argument('--config', nargs='*', help='MambaRecConfig overrides key=value')
    p.add_argument('--profile', action='store_true', help='print the top operators')
    p.add_argument('--no-parts', action='store_true')
    p.add_argument('--no-mmd', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    p.add_argument('--out', default=None, help='JSON path (default: '
                   'benchmarks/results/train_step-<device>.json)')
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda: no CUDA device available')
    # Every measurement in a fresh process, so peak memory is the step's own.
    full = run_child(args, *(['--profile'] if args.profile else []),
                     *(['--no-parts'] if args.no_parts else []))
    without = run_child(args, '--no-mmd', '--no-parts')
    result = {
        'device': args.device,
        'device_name': (torch.cuda.get_device_name(args.device)
                        if args.device.startswith('cuda') else platform.processor()
                        or platform.machine()),
        'threads': args.threads or torch.get_num_threads(),
        'torch': torch.__version__, 'config': _parse_overrides(args.config),
        'batch_size': args.batch_size, 'dataset': args.dataset,
        **{k: v for k, v in full.items() if k != 'profile'},
        'peak_memory_without_mmd_mb': without['peak_memory_mb'],
        'mmd_peak_overhead_mb': full['peak_memory_mb'] - without['peak_memory_mb'],
        'median_step_without_mmd_s': without['median']['step_s'],
    }
    print(f"MambaRec training step, {args.dataset}, batch {args.batch_size}, "
          f"{result['device']} ({result['device_name']}, {result['threads']} threads)")
    print(f"  graphs + model built in {full['build_s']:.1f} s")
    m = full['median']
    print(f"  median step {m['step_s'] * 1e3:7.1f} ms  (forward {m['forward_s'] * 1e3:.1f}"
          f", backward {m['backward_s'] * 1e3:.1f}, optimizer "
          f"{m['optimizer_s'] * 1e3:.1f}); all steps: "
          f"{', '.join(f'{s * 1e3:.0f}' for s in full['steps_s'])} ms")
    print(f"  peak memory {full['peak_memory_mb']:.0f} MB "
          f"({'allocated' if args.device.startswith('cuda') else 'RSS'}); "
          f"without MMD {without['peak_memory_mb']:.0f} MB -> MMD adds "
          f"{result['mmd_peak_overhead_mb']:.0f} MB; step without MMD "
          f"{without['median']['step_s'] * 1e3:.1f} ms")
    if 'parts_fwd_bwd_s' in full:
        print('  forward + backward of the parts alone:')
        for name, s in full['parts_fwd_bwd_s'].items():
            print(f'    {name:48s} {s * 1e3:7.1f} ms')
    if args.profile:
        print(full['profile'])
    out = Path(args.out) if args.out else RESULTS / f'train_step-{args.device}.json'
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mambarec_pyg.io import write_json
    write_json(out, result)
    print(f'  written {out}')


if __name__ == '__main__':
    main()
