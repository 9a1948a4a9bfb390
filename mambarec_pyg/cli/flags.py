"""Flags from dataclass fields: ``--<section>.<field>`` for every field of a config
section."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Mapping, Optional, Sequence

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
        add_section_flags(g, section, cls)


#: The prefix of the ``dest`` of every config flag: ``cfg:<section>.<field>``.
PREFIX = 'cfg:'


def add_section_flags(group, section: str, cls, skip: Sequence[str] = (),
                      notes: Optional[Mapping[str, str]] = None) -> None:
    """One flag ``--<section>.<field-with-dashes>`` per field of the dataclass
    ``cls`` into ``group``, typed by the field's annotation, its help from the
    field's doc comment and default; the value lands in ``cfg:<section>.<field>``
    (``None`` when not given; :func:`config_overrides` collects them). ``skip``:
    fields without a flag; ``notes``: text added to a field's help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    notes = notes or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        tp = hints[f.name]
        shown = ','.join(map(str, default)) if isinstance(default, tuple) else (
            "none (the model's default)" if default is None and section == 'train'
            else 'none' if default is None else default)
        group.add_argument(
            f'--{section}.{f.name.replace("_", "-")}', dest=f'{PREFIX}{section}.{f.name}',
            type=_arg_type(tp), metavar='BOOL' if tp is bool else
            f.name.upper().split('_')[-1],
            help=((docs[f.name].replace('``', '') + ' ' if f.name in docs else '') +
                  notes.get(f.name, '') +
                  f'[{describe_type(tp)}; default: {shown}]').replace('%', '%%'))


def config_overrides(args: argparse.Namespace, section: Optional[str] = None
                     ) -> Dict[str, Any]:
    """The config flags given on the command line, ``{'section.field': value}``
    (only ``section``'s, without the prefix ``section.``, when it is given)."""
    out: Dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(PREFIX) and value is not None:
            name = key[len(PREFIX):]
            if section is None:
                out[name] = value
            elif name.startswith(section + '.'):
                out[name[len(section) + 1:]] = value
    return out
