"""What an approximate kNN graph costs in quality: recall of each backend's neighbours
and the metric of a model trained on its graph, against the exact graph.

For each backend of ``data.knn_backend`` (exact, faiss, hnsw, ivf), builds the kNN
neighbour lists of every modality of the synthetic preset (``baby`` by default: the
sizes of the paper's Baby) and trains the same model with the same seed on each
graph. Prints a table (build time, recall@k of the neighbours against exact, test
metric, relative difference to the exact graph's metric) and writes
``benchmarks/results/knn_quality.json``. The acceptance target is a relative
difference of at most 1% for every approximate backend.

    python benchmarks/knn_quality.py [--preset baby] [--models freedom mambarec]
    python benchmarks/knn_quality.py --tiny        # a smoke run on the tiny preset
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from mambarec_pyg.config import Config, DataConfig, TrainConfig, model_config_class
from mambarec_pyg.data import load_dataset
from mambarec_pyg.data.graphs import knn_neighbours
from mambarec_pyg.data.knn import KNN_BACKENDS, KNNBackend
from mambarec_pyg.io import write_json
from mambarec_pyg.train.experiment import run

TARGET_RELATIVE_DIFFERENCE = 0.01


def neighbour_recall(cols: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the exact neighbours (``truth [N, k]``) found in ``cols [N, k]``."""
    return float((cols.unsqueeze(2) == truth.unsqueeze(1)).any(2).float().mean())


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby')
    parser.add_argument('--tiny', action='store_true',
                        help='smoke run: tiny preset, 2 epochs')
    parser.add_argument('--models', nargs='+', default=['freedom', 'mambarec'])
    parser.add_argument('--backends', nargs='+', default=list(KNN_BACKENDS),
                        choices=KNN_BACKENDS)
    parser.add_argument('--k', type=int, default=10)
    parser.add_argument('--max-epochs', type=int, default=1000)
    parser.add_argument('--metric', default='recall@20')
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'knn_quality.json'))
    args = parser.parse_args()
    if args.tiny:
        args.preset, args.max_epochs = 'tiny', 2

    base = DataConfig(synthetic=args.preset)
    data = load_dataset(base)
    neighbours, truth = {}, {}
    for name in args.backends:
        backend = KNNBackend(name)
        t = time.perf_counter()
        cols = {m: knn_neighbours(data['item'][m], args.k, backend=backend)[1]
                .view(-1, args.k) for m in data.modalities}
        neighbours[name] = {'build_s': time.perf_counter() - t}
        if name == 'exact':
            truth = cols
        elif truth:
            neighbours[name]['recall'] = {m: neighbour_recall(cols[m], truth[m])
                                          for m in cols}

    rows = []
    for model in args.models:
        metric = {}
        for name in args.backends:
            config = Config(data=replace(base, knn_backend=name),
                            model=model_config_class(model)(),
                            train=TrainConfig(max_epochs=args.max_epochs, device='cpu'))
            with tempfile.TemporaryDirectory(prefix='mambarec-knnq-') as out:
                result = run(config, out, quiet=True)
            metric[name] = result.test[args.metric]
            rows.append({'model': model, 'backend': name, 'epochs': result.epochs,
                         'best_epoch': result.best_epoch, args.metric: metric[name]})
        exact = metric.get('exact')
        for row in rows:
            if row['model'] == model and exact:
                row['relative_difference'] = (row[args.metric] - exact) / exact
                row['within_target'] = abs(row['relative_difference']) <= \
                    TARGET_RELATIVE_DIFFERENCE

    print(f"{'backend':8} {'build s':>8}  recall vs exact")
    for name, info in neighbours.items():
        print(f"{name:8} {info['build_s']:8.2f}  {info.get('recall', '-')}")
    print(f"\n{'model':10} {'backend':8} {args.metric:>10} {'rel. diff':>10}")
    for row in rows:
        diff = row.get('relative_difference')
        print(f"{row['model']:10} {row['backend']:8} {row[args.metric]:10.4f} "
              f"{'-' if diff is None else f'{diff:+.2%}':>10}")
    result = {'preset': args.preset, 'k': args.k, 'metric': args.metric,
              'target_relative_difference': TARGET_RELATIVE_DIFFERENCE,
              'neighbours': neighbours, 'runs': rows,
              'machine': platform.platform(), 'torch': torch.__version__}
    write_json(args.out, result)
    return result


if __name__ == '__main__':
    main()
