"""Time a full evaluation (all valid users, all items) at Baby scale.

Two figures on the ``baby`` synthetic preset (19,445 users, 7,050 items):

* the evaluator's own cost on random embeddings of width 64 (scoring in batches,
  masking training items, top-50, Recall / NDCG / Precision / MAP at 5, 10, 20, 50);
  the first call builds the per-split structures (cached afterwards) and is reported
  separately;
* a whole evaluation of a MambaRec model (reference variant, default settings): its
  eval-mode forward pass once, then the same ranking.

Prints medians and writes ``benchmarks/results/evaluate-<device>.json``.

Target on a 2-core machine: at most 2 s per evaluation.

    python benchmarks/evaluate.py [--preset baby] [--repeats 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mambarec_pyg.data import synthetic_dataset
from mambarec_pyg.io import write_json
from mambarec_pyg.train.checkpoint import environment
from mambarec_pyg.train.evaluate import Evaluator
from mambarec_pyg.utils import resolve_device

TARGET_S = 2.0


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=4096)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)

    data = synthetic_dataset(args.preset, seed=0)
    g = torch.Generator().manual_seed(0)
    U, N = int(data['user'].num_nodes), int(data['item'].num_nodes)
    user = torch.randn(U, 64, generator=g).to(device)
    item = torch.randn(N, 64, generator=g).to(device)

    t = time.perf_counter()
    ev = Evaluator(data, batch_size=args.batch_size, device=device)
    first = ev.from_embeddings(user, item, 'valid')
    _sync(device)
    first_s = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        ev.from_embeddings(user, item, 'valid')
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)

    from mambarec_pyg.models.mambarec import MambaRec
    from mambarec_pyg.train.evaluate import evaluate
    torch.manual_seed(0)
    model = MambaRec(data).to(device)
    evaluate(model, data, 'valid', batch_size=args.batch_size)  # warm-up
    model_times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        evaluate(model, data, 'valid', batch_size=args.batch_size)
        _sync(device)
        model_times.append(time.perf_counter() - t)
    model_med = statistics.median(model_times)
    result = {
        'preset': args.preset, 'users_evaluated': first['num_users'], 'items': N,
        'batch_size': args.batch_size, 'device': str(device),
        'first_call_s': first_s, 'median_s': med, 'min_s': min(times),
        'with_model_forward_median_s': model_med,
        'target_s': TARGET_S, 'meets_target': model_med <= TARGET_S,
        'repeats': args.repeats, 'environment': environment(device),
    }
    print(f"{args.preset}: {first['num_users']:,} users x {N:,} items on {device}")
    print(f"  first call (builds split structures) {first_s:6.2f} s")
    print(f"  full evaluation, median of {args.repeats}      {med:6.2f} s "
          f"(target {TARGET_S:.1f} s)")
    print(f"  with the MambaRec forward pass        {model_med:6.2f} s")
    out = Path(args.out or Path(__file__).parent / 'results' /
               f'evaluate-{device.type}.json')
    write_json(out, result)
    print(f'wrote {out}')
    return result


if __name__ == '__main__':
    main()
