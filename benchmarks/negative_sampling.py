"""Time the training pairs of one epoch (shuffle + one negative per pair) at Baby scale.

Builds :class:`~mambarec_pyg.data.sampling.TrainingPairs` once for the ``baby``
synthetic preset (19,445 users, 7,050 items, ~119k training pairs) and times drawing
a whole epoch (permutation, uniform negatives, vectorised rejection of the user's
training items) several times. Also times PyG's
:func:`~torch_geometric.utils.structured_negative_sampling` on the same pairs for
comparison (it draws from all node ids of a homogeneous graph, so it is not the
protocol; shown for scale only). Prints medians and writes
``benchmarks/results/negative_sampling.json``.

Target on a 2-core machine: at most 0.5 s per epoch.

    python benchmarks/negative_sampling.py [--preset baby] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch_geometric.utils import structured_negative_sampling

from mambarec_pyg.data import synthetic_dataset
from mambarec_pyg.data.sampling import TrainingPairs
from mambarec_pyg.io import write_json
from mambarec_pyg.train.checkpoint import environment

TARGET_S = 0.5
UI = ('user', 'interacts', 'item')


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby')
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'negative_sampling.json'))
    args = parser.parse_args()

    data = synthetic_dataset(args.preset, seed=0)
    ei = data[UI].edge_index
    N = int(data['item'].num_nodes)
    t = time.perf_counter()
    pairs = TrainingPairs(ei, N)
    setup_s = time.perf_counter() - t
    g = torch.Generator().manual_seed(0)
    epochs, batches = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        pairs.sample_epoch(g)
        epochs.append(time.perf_counter() - t)
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _batch in pairs.epoch(2048, g):
            pass
        batches.append(time.perf_counter() - t)
    pyg = []
    homo = torch.stack([ei[0], ei[1] + int(data['user'].num_nodes)])
    for _ in range(max(3, args.repeats // 4)):
        t = time.perf_counter()
        structured_negative_sampling(homo, int(data['user'].num_nodes) + N)
        pyg.append(time.perf_counter() - t)

    result = {
        'preset': args.preset, 'training_pairs': pairs.num_pairs, 'items': N,
        'setup_s': setup_s,
        'epoch_median_s': statistics.median(epochs),
        'epoch_with_batching_median_s': statistics.median(batches),
        'pyg_structured_negative_sampling_median_s': statistics.median(pyg),
        'target_s': TARGET_S,
        'meets_target': statistics.median(batches) <= TARGET_S,
        'repeats': args.repeats,
        'environment': environment(torch.device('cpu')),
    }
    print(f"{args.preset}: {pairs.num_pairs:,} pairs, {N:,} items")
    print(f"  set-up (once)                     {setup_s * 1e3:8.1f} ms")
    print(f"  one epoch of triples (median)     {result['epoch_median_s'] * 1e3:8.1f} ms")
    print(f"  ... cut into batches of 2048      "
          f"{result['epoch_with_batching_median_s'] * 1e3:8.1f} ms  "
          f"(target {TARGET_S * 1e3:.0f} ms)")
    print(f"  PyG structured_negative_sampling  "
          f"{result['pyg_structured_negative_sampling_median_s'] * 1e3:8.1f} ms "
          f"(not the protocol; for scale)")
    out = Path(args.out)
    write_json(out, result)
    print(f'wrote {out}')
    return result


if __name__ == '__main__':
    main()
