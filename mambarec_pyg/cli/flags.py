"""Flags from dataclass fields: ``--<section>.<field>`` for every field of a config
section."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import describe_type, field_docs
from .common import DEFAULT_MODEL, _arg_type, _sections


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
    from ..models.registry import list_models
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
