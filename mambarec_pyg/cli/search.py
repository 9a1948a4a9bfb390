"""``mambarec search``."""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

from ..config import ConfigError, parse_text
from ..utils import did_you_mean
from .common import CommandError, _config, _default_name, _sections, _table
from .flags import executor_options


def cmd_search(args: argparse.Namespace) -> int:
    from ..train.search import grid_search
    config = _config(args)
    grid = None
    if args.grid:
        grid = {}
        sections = dict(_sections(type(config.model).name))
        for spec in args.grid:
            key, eq, values = spec.partition('=')
            if not eq or not values:
                raise ConfigError(f'--grid {spec!r}: expected OPTION=V1,V2,...')
            key = key.replace('-', '_')
            section, _, name = key.partition('.')
            cls = sections.get(section)
            hints = typing.get_type_hints(cls) if cls else {}
            if name not in hints:
                raise ConfigError(f'--grid: unknown option {key!r}'
                                  f'{did_you_mean(name, hints) if hints else ""} '
                                  f'(expected <data|model|train>.<field>)')
            tp = hints[name]
            scalar = next((a for a in typing.get_args(tp) if a in (int, float, str,
                                                                   bool)), tp)
            try:
                grid[key] = [parse_text(v, scalar) for v in values.split(',')]
            except ValueError as e:
                raise ConfigError(f'--grid {key}: {e}') from None
    out = Path(args.output) if args.output else Path('runs') / (
        f'search-{type(config.model).name}-{_default_name(config)}')
    options = executor_options(args)
    elsewhere = (options.kind != 'local' or options.workers > 1 or
                 args.sampler != 'grid' or args.log)
    try:
        result = grid_search(None, config, grid, out, resume=args.resume,
                             quiet=args.quiet, executor=options if elsewhere else None,
                             sampler=args.sampler, trials=args.trials,
                             optuna_sampler=args.optuna_sampler, log=args.log or ())
    except ImportError as e:  # an optional dependency of the executor or sampler
        raise CommandError(str(e), 1) from None
    metric = result.metric
    rows = [('point', f'valid {metric}', 'test recall@20', 'test ndcg@20', 'epoch')]
    for p in result.points:
        rows.append((p['name'] + (' *' if p is result.selected else ''),
                     f"{p['valid'].get(metric, float('nan')):.4f}",
                     f"{p['test'].get('recall@20', float('nan')):.4f}",
                     f"{p['test'].get('ndcg@20', float('nan')):.4f}",
                     str(p['best_epoch'])))
    print(_table(rows))
    print(f"selected (by valid {metric}): {result.selected['name']}")
    print(f'results: {out / "search.json"}')
    return 0
