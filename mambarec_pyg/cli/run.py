"""``mambarec train``, ``evaluate``, ``recommend`` and ``models``."""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import List

from ..config import Config

from .common import (CommandError, _config, _default_name, _load, _result_table,
                     _table)


def _writes_output(config: Config) -> bool:
    """Whether this process prints a command's results: not a process other than
    rank 0 of a data-parallel run under ``torchrun`` (which trains silently and
    returns the same result)."""
    from ..train.distributed import writer_rank
    return writer_rank(config.train.distributed)


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.experiment import run
    from ..train.rundir import holds_run
    config = _config(args)
    name = type(config.model).name
    out = Path(args.output) if args.output else Path('runs') / (
        f'{name}-{_default_name(config)}')
    if holds_run(out) and not (args.resume or args.overwrite):
        raise CommandError(f'{out} already holds a run; use --resume to continue it, '
                           f'--overwrite to start again, or another --output', 2)
    if not _writes_output(config):
        result = run(config, out, resume=args.resume, quiet=True)
        return 130 if result.status == 'interrupted' else 0  # rank 0 reports it
    if not args.quiet:
        print(f'run directory: {out}', file=sys.stderr)
    result = run(config, out, resume=args.resume, quiet=args.quiet)
    if result.status == 'interrupted' and result.epochs == 0:
        print(f'mambarec train: interrupted before the first epoch completed; no '
              f'checkpoint, results or config were written to {out}', file=sys.stderr)
        return 130
    print(_result_table(result.best_epoch, result.valid, result.test,
                        config.train.valid_metric))
    for w in result.warnings:
        print(f'warning: {w}', file=sys.stderr)
    print(f'results: {out / "results.json"}')
    if result.status == 'interrupted':
        print(f'interrupted: continue with --resume --output {out}', file=sys.stderr)
        return 130
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.registry import get_model_class, list_models
    rows = []
    for name in list_models():
        cls = get_model_class(name)
        doc = (cls.__doc__ or '').strip().splitlines()
        need = ('item features: none' if cls.min_modalities == 0 else
                f'item features: >= {cls.min_modalities}')
        rows.append({'name': name, 'class': f'{cls.__module__}.{cls.__name__}',
                     'summary': doc[0].rstrip('.') if doc else '',
                     'reference': cls.reference, 'min_modalities': cls.min_modalities,
                     'grid': {k: list(v) for k, v in cls.config_class.GRID.items()},
                     'needs': need})
    if args.format == 'json':
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r['name']) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['reference'] or r['summary']} "
              f"[{r['needs']}]")
    print('\ntrain one with: mambarec train --synthetic tiny --model.name NAME; its '
          'options: mambarec train --model.name NAME --help')
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..train.evaluate import check_split, evaluate
    model, data, config = _load(args)
    splits = ('valid', 'test') if args.split == 'both' else (args.split, )
    for split in splits:  # every split asked for, before any is printed
        check_split(data, split)
    results = {}
    for split in splits:
        results[split] = evaluate(model, data, split, ks=config.train.topk,
                                  batch_size=config.train.eval_batch_size,
                                  progress=not args.quiet)
    if args.format == 'json':
        print(json.dumps(results, indent=2))
        return 0
    ks = config.train.topk
    rows = [('split', 'metric') + tuple(f'@{k}' for k in ks)]
    for split, m in results.items():
        for name in ('recall', 'ndcg', 'precision', 'map'):
            rows.append((split, name) + tuple(f'{m[f"{name}@{k}"]:.4f}' for k in ks))
    print(_table(rows))
    print(', '.join(f'{s}: {m["num_users"]} users' for s, m in results.items()))
    return 0


def _user_ids(args: argparse.Namespace) -> List[int]:
    if args.users_file:
        path = Path(args.users_file)
        if not path.is_file():
            raise CommandError(f'{path}: users file not found')
        try:
            text = path.read_text(encoding='utf-8-sig')  # a BOM, as .inter allows
        except UnicodeDecodeError:
            raise CommandError(f'{path}: not a text file of user ids', 2) from None
        source = str(path)
    else:
        text, source = args.users, '--users'
    ids = []
    for n, tok in enumerate(t.strip() for t in text.replace('\n', ',').split(',')):
        if not tok:
            continue
        try:
            ids.append(int(tok))
        except ValueError:
            raise CommandError(f'{source}: expected integer user ids, got {tok!r} '
                               f'(entry {n + 1})', 2) from None
    if not ids:
        raise CommandError(f'{source}: no user ids given', 2)
    return ids


def cmd_recommend(args: argparse.Namespace) -> int:
    from ..train.evaluate import recommend
    if args.k <= 0:
        raise CommandError(f'--k: expected a positive integer, got {args.k}', 2)
    users = _user_ids(args)
    model, data, _ = _load(args)
    num_users = int(data['user'].num_nodes)
    bad = [u for u in users if not 0 <= u < num_users]
    if bad:
        raise CommandError(f'user id {bad[0]}: expected an id in [0, {num_users}) '
                           f'for this dataset', 2)
    items, scores = recommend(model, users, k=args.k)
    # Only real candidates: a user with fewer than k unseen items gets fewer.
    lists = [[(i, s) for i, s in zip(row_i, row_s) if i >= 0 and math.isfinite(s)]
             for row_i, row_s in zip(items.tolist(), scores.tolist())]
    if args.format == 'json':
        text = json.dumps([{'user': u, 'items': [i for i, _ in lst],
                            'scores': [round(s, 6) for _, s in lst]}
                           for u, lst in zip(users, lists)], indent=1,
                          allow_nan=False) + '\n'
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(('user', 'rank', 'item', 'score'))
        for u, lst in zip(users, lists):
            for rank, (i, s) in enumerate(lst, 1):
                w.writerow((u, rank, i, f'{s:.6g}'))
        text = buf.getvalue()
    short = sum(1 for lst in lists if len(lst) < args.k)
    if short:
        print(f'note: {short} user(s) have fewer than {args.k} items they have not '
              f'interacted with; they get fewer recommendations', file=sys.stderr)
    if args.out:
        from ..io import atomic_write_text
        atomic_write_text(args.out, text)
        print(f'wrote recommendations for {len(users)} users (up to {args.k} each) '
              f'to {args.out}', file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
