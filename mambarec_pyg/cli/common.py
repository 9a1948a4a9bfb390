"""What the commands share: errors, typed values, the config from --config and
flags, checkpoints, tables."""
from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..config import (Config, ConfigError, DataConfig, TrainConfig, describe_type,
                      parse_text, read_yaml)

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
    from ..models.registry import get_config_class
    return (('data', DataConfig), ('model', get_config_class(model_name)),
            ('train', TrainConfig))



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
    from .flags import config_overrides
    overrides: Dict[str, Any] = config_overrides(args)
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
    from ..data.dataset import load_dataset
    from ..data.fingerprint import DataChangedWarning
    from ..train.checkpoint import load_checkpoint
    from ..train.experiment import load_run
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
            from ..config import from_dict
            data = load_dataset(from_dict(DataConfig, spec))
        loaded = load_run(path, device=args.device, data=data, trusted=trusted,
                          allow_changed_data=args.allow_changed_data)
    for w in caught:
        if issubclass(w.category, DataChangedWarning):
            print(f'warning: {w.message}', file=sys.stderr)
        else:  # as they would have been shown
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return loaded



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
