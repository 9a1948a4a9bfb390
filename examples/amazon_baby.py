"""The paper's Amazon Baby experiment end to end (MambaRec, CIKM 2025, Table 2).

Configuration: the reference variant (what the published numbers were computed with),
reduction factor r = 8, MMD weight 0.15 (the paper's best with r = 8, Section 5.4.2)
at kernel bandwidth 1.5 (the middle of the paper's grid {1.0, 1.5, 2.0}; the paper
does not say which bandwidth its best Baby run used), InfoNCE weight 0.01, batch size
2048, Adam 1e-3 decayed by 0.96 every 50 epochs, early stopping on validation
Recall@20 with patience 20, at most 1000 epochs, seed 999.

Data: the MMRec files ``baby/baby.inter``, ``baby/image_feat.npy`` and
``baby/text_feat.npy`` under ``--data`` (default: ``data/`` in the repository or the
working directory). Without them the script says so and runs on the ``baby``
synthetic preset, which has the same numbers of users, items and interactions and
the same feature sizes (generated once, about 20 s, then cached).

    python examples/amazon_baby.py --quick          # 3 epochs (see the README for times)
    python examples/amazon_baby.py --device cuda    # the full run
    python examples/amazon_baby.py --resume         # continue an interrupted run
    python examples/amazon_baby.py --train.num-threads 1   # beside another job
    torchrun --nproc-per-node 4 examples/amazon_baby.py --device cuda  # 4 GPUs

Like ``mambarec train``, it refuses to start over a finished or interrupted run in
the same ``--output`` directory: continue it with ``--resume`` or start again with
``--overwrite``.

With the released loss weights the BPR loss stays near ln 2 for the first epochs
(docs/reference.md §8), so a ``--quick`` run mostly shows the first epoch's numbers;
``--cl-warmup-epochs 3`` holds the InfoNCE weight at 0 for three epochs (not the
released behaviour; on the Baby-scale synthetic data the best valid Recall@20 was
0.116 in 5 epochs without it and 0.244 in 7 epochs with it).

It ends with a Table-2-style row (Recall@10, Recall@20, NDCG@10, NDCG@20 on the test
split at the best validation epoch), the paper's row on the real data, most-popular
ranking on the same data (the floor every model should clear) and the path of the
results file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mambarec_pyg.config import (Config, ConfigError, DataConfig, MambaRecConfig,
                                 TrainConfig)
from mambarec_pyg.data import load_dataset
from mambarec_pyg.models import Popularity
from mambarec_pyg.train.distributed import writer_rank
from mambarec_pyg.train.evaluate import evaluate
from mambarec_pyg.train.experiment import run
from mambarec_pyg.train.rundir import holds_run

REPO = Path(__file__).resolve().parent.parent
FILES = ('baby.inter', 'image_feat.npy', 'text_feat.npy')
#: the paper's Table 2 row for MambaRec on Baby.
PAPER = {'recall@10': 0.0660, 'recall@20': 0.1013, 'ndcg@10': 0.0363,
         'ndcg@20': 0.0454}


def find_baby(root: str | None) -> Path | None:
    """The directory holding ``baby/`` with all three MMRec files, if any."""
    candidates = [Path(root)] if root else list(dict.fromkeys(
        [REPO / 'data', Path.cwd().resolve() / 'data']))
    for c in candidates:
        if all((c / 'baby' / f).is_file() for f in FILES):
            return c
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', metavar='ROOT',
                        help='directory holding baby/ (MMRec files)')
    parser.add_argument('--quick', action='store_true',
                        help='3 epochs only: a smoke run, not the paper number')
    parser.add_argument('--epochs', type=int, help='override the maximum epochs')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N')
    parser.add_argument('--train.num-threads', '--num-threads', type=int, default=0,
                        dest='num_threads', metavar='N',
                        help='CPU threads for torch (default 0: PyTorch\'s choice; 1 '
                             'is fastest when another job shares the cores)')
    parser.add_argument('--cl-warmup-epochs', '--model.cl-warmup-epochs', type=int,
                        default=0, dest='cl_warmup_epochs',
                        help='epochs with the InfoNCE weight held at 0 (default 0, as '
                             'released; see MambaRecConfig.cl_warmup_epochs)')
    parser.add_argument('--output', help='run directory (default runs/amazon_baby'
                        '[-synthetic][-quick])')
    parser.add_argument('--resume', action='store_true', help='continue the run')
    parser.add_argument('--overwrite', action='store_true',
                        help='start again over an earlier run in --output')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)

    root = find_baby(args.data)
    # under torchrun, rank 0 alone prints
    say = print if writer_rank() else (lambda *a, **k: None)
    if root is not None:
        data_cfg = DataConfig(root=str(root), dataset='baby')
        say(f'Amazon Baby from {root / "baby"}')
    else:
        where = args.data or ' or '.join(map(str, dict.fromkeys(
            [REPO / 'data', Path.cwd().resolve() / 'data'])))
        say(f'Amazon Baby files ({", ".join(FILES)}) not found under {where}; '
              f'running on the Baby-scale synthetic preset instead (same numbers of '
              f'users, items and interactions; the metrics are NOT comparable with '
              f'the paper).')
        data_cfg = DataConfig(synthetic='baby')
    epochs = args.epochs or (3 if args.quick else 1000)
    try:
        config = Config(
            data=data_cfg,
            model=MambaRecConfig(variant='reference', reduction_factor=8,
                                 mmd_weight=0.15, mmd_bandwidth=1.5,
                                 cl_warmup_epochs=args.cl_warmup_epochs),
            train=TrainConfig(seed=999, device=args.device, batch_size=2048, lr=1e-3,
                              lr_decay=0.96, lr_decay_epochs=50, patience=20,
                              max_epochs=epochs, num_threads=args.num_threads))
    except ConfigError as e:
        print(f'amazon_baby.py: error: {e}', file=sys.stderr)
        return 2
    name = 'amazon_baby' + ('' if root else '-synthetic') + ('-quick' if args.quick
                                                            else '')
    out = Path(args.output) if args.output else Path('runs') / name
    if holds_run(out) and not (args.resume or args.overwrite):
        print(f'amazon_baby.py: {out} already holds a run; continue it with --resume, '
              f'start again with --overwrite, or choose another --output',
              file=sys.stderr)
        return 2
    try:
        result = run(config, out, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt:
        print('amazon_baby.py: interrupted', file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:
        print(f'amazon_baby.py: error: {e}', file=sys.stderr)
        return 1
    if not writer_rank(config.train.distributed):  # under torchrun: rank 0 reports
        return 130 if result.status == 'interrupted' else 0
    if result.status == 'interrupted' and result.new_epochs == 0:
        print(f'amazon_baby.py: interrupted before an epoch completed; no checkpoint '
              f'or results were written to {out}', file=sys.stderr)
        return 130

    cols = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')
    header = f'{"":24s}' + ''.join(f'{c.replace("recall", "R").replace("ndcg", "N"):>9s}'
                                   for c in cols)
    print()
    print(header)
    label = 'MambaRec (this run)' if root else 'MambaRec (synthetic)'
    print(f'{label:24s}' + ''.join(f'{result.test[c]:9.4f}' for c in cols))
    if root is not None:
        print(f'{"MambaRec (paper)":24s}' + ''.join(f'{PAPER[c]:9.4f}' for c in cols))
    # the floor every model should clear: most-popular ranking on the same data
    data = load_dataset(config.data)
    floor = evaluate(Popularity(data), data, 'test')
    print(f'{"most-popular (floor)":24s}' + ''.join(f'{floor[c]:9.4f}' for c in cols))
    print(f'test metrics at the best validation epoch ({result.best_epoch}) of '
          f'{result.epochs} run ({result.status})')
    for w in result.warnings:
        print(f'warning: {w}', file=sys.stderr)
    print(f'results: {out / "results.json"}')
    return 130 if result.status == 'interrupted' else 0


if __name__ == '__main__':
    sys.exit(main())
