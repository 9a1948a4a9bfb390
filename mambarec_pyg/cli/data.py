"""``mambarec prepare`` and ``stats``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CommandError, _config


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.amazon import prepare_amazon
    try:
        out = prepare_amazon(args.ratings, args.meta, args.images, args.data,
                             args.dataset, text_model=args.text_model, seed=args.seed,
                             image_dim=args.image_dim, overwrite=args.overwrite,
                             verbose=not args.quiet)
    except FileExistsError:
        raise CommandError(f"'{Path(args.data) / args.dataset}' exists; use "
                           f'--overwrite to replace it', 1) from None
    except (ImportError, FileNotFoundError) as e:
        raise CommandError(str(e), 1) from None
    print(f'dataset: {out} (train with: mambarec train --data {args.data} '
          f'--dataset {args.dataset})')
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..data import summarize
    from ..data.dataset import load_dataset
    config = _config(args)
    data = load_dataset(config.data)
    summary = summarize(data)
    if args.format == 'json':
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary)
    return 0
