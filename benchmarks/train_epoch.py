"""Time one training epoch (and its validation) at Baby scale, MambaRec by default.

Builds MambaRec (reference variant, the paper's Baby settings: r = 8, MMD weight 0.15
at bandwidth 1.5, B = 2048) on the ``baby`` synthetic preset (19,445 users, 7,050
items, ~119k training pairs, 4096-d image and 384-d text features) and runs whole
epochs through :class:`~mambarec_pyg.train.trainer.Trainer`: sampling, forward,
loss, backward and fused Adam for every batch, then the full validation ranking.
Prints the median epoch time and writes ``benchmarks/results/train_epoch-<device>.json``.

Target on a 2-core CPU: at most 30 s per training epoch.

    python benchmarks/train_epoch.py [--epochs 3] [--device cpu|cuda] [--preset baby]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from mambarec_pyg.config import TrainConfig
from mambarec_pyg.data import synthetic_dataset
from mambarec_pyg.io import write_json
from mambarec_pyg.models import get_config_class
from mambarec_pyg.train.checkpoint import environment
from mambarec_pyg.train.experiment import build_model
from mambarec_pyg.train.trainer import Trainer
from mambarec_pyg.utils import resolve_device, seed_everything

TARGET_S = 30.0


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--preset', default='baby')
    parser.add_argument('--model', default='mambarec', help='a registered model')
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch-size', type=int, default=2048)
    parser.add_argument('--out', default=None)
    parser.add_argument('--progress', action='store_true', help='show progress bars')
    parser.add_argument('--no-deterministic', action='store_true',
                        help='train without torch.use_deterministic_algorithms')
    args = parser.parse_args()
    device = resolve_device(args.device)

    t = time.perf_counter()
    data = synthetic_dataset(args.preset, seed=0)
    load_s = time.perf_counter() - t
    seed_everything(999)
    t = time.perf_counter()
    model = build_model(data, get_config_class(args.model)())
    build_s = time.perf_counter() - t
    cfg = TrainConfig(device=str(device), max_epochs=args.epochs,
                      batch_size=args.batch_size, patience=10**6,
                      deterministic=False if args.no_deterministic else None)
    trainer = Trainer(model, data, cfg, quiet=not args.progress)
    t = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t
    train = [h['train_s'] for h in result.history]
    evals = [h['eval_s'] for h in result.history]
    med = statistics.median(train)
    batches = trainer.pairs.num_batches(args.batch_size)
    out = {
        'preset': args.preset, 'device': str(device), 'epochs': args.epochs,
        'batch_size': args.batch_size, 'batches_per_epoch': batches,
        'deterministic': cfg.deterministic,  # None: on for CPU, off for CUDA
        'training_pairs': trainer.pairs.num_pairs,
        'data_load_s': load_s, 'model_build_s': build_s,
        'epoch_train_s': train, 'epoch_eval_s': evals,
        'epoch_train_median_s': med, 'step_median_s': med / batches,
        'eval_median_s': statistics.median(evals), 'fit_s': fit_s,
        'model': args.model,
        'loss_per_epoch': [h['loss'] for h in result.history],
        'target_s': TARGET_S, 'meets_target': med <= TARGET_S,
        'environment': environment(device),
    }
    print(f"{args.model}, {args.preset} on {device}: {trainer.pairs.num_pairs:,} pairs, "
          f"{batches} batches of {args.batch_size}, deterministic "
          f"{cfg.deterministic}")
    print(f"  data load {load_s:.1f} s, model build (graphs from the processed cache "
          f"after the first run) {build_s:.1f} s")
    print(f"  training epoch, median of {args.epochs}: {med:.1f} s "
          f"({med / batches * 1e3:.0f} ms per step; target {TARGET_S:.0f} s)")
    print(f"  validation (forward + full ranking), median: "
          f"{statistics.median(evals):.2f} s")
    suffix = '-nondeterministic' if args.no_deterministic else ''
    path = Path(args.out or Path(__file__).parent / 'results' /
                f'train_epoch-{args.model}-{device.type}{suffix}.json')
    write_json(path, out)
    print(f'wrote {path}')
    return out


if __name__ == '__main__':
    main()
