"""Named configurations: a model plus option overrides, usable as a row of any
experiment (``--models mambarec mambarec-warmup``).

A row name is either a registered model (its default configuration, e.g.
``mambarec``: the released configuration) or a preset registered here. Built-in
presets:

* ``mambarec-warmup`` -- MambaRec with the InfoNCE weight held at 0 for the first 10
  epochs (``model.cl_warmup_epochs``; docs/reference.md §8), which lets the BPR loss
  leave ln 2 early (on a real dataset, 10 warm-up epochs took the released
  configuration from 0.06 to 0.35 valid Recall@20);
* ``mambarec-paper`` -- MambaRec as the paper's text describes it
  (``model.variant = 'paper'``; docs/reference.md §6).

Your own::

    from mambarec_pyg.experiments import register_preset
    register_preset('mambarec-cl0.1', 'mambarec', {'model.cl_weight': 0.1},
                    'MambaRec with lambda_cl = 0.1')

or a YAML file given to ``mambarec experiment ... --presets FILE.yaml``::

    mambarec-cl0.1:
      model: mambarec
      description: MambaRec with lambda_cl = 0.1
      overrides: {model.cl_weight: 0.1}
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

from ..config import Config, ConfigError, read_yaml
from ..utils import did_you_mean

__all__ = ['Preset', 'register_preset', 'get_preset', 'list_presets', 'resolve_row',
           'load_presets', 'unregister_preset']


@dataclass(frozen=True)
class Preset:
    """A named configuration of a registered model."""

    #: the row name (a registered model's name or a preset's).
    name: str
    #: the registered model it configures.
    model: str
    #: dotted option overrides (``model.X``, ``train.X``) on that model's defaults.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    #: one line for the reports.
    description: str = ''

    def apply(self, config: Config) -> Config:
        """``config`` switched to this preset's model and options."""
        changes = {'model.name': self.model}
        changes.update(self.overrides)
        return config.with_overrides(changes)


_PRESETS: Dict[str, Preset] = {}


def register_preset(name: str, model: str, overrides: Optional[Mapping[str, Any]] = None,
                    description: str = '') -> Preset:
    """Register ``name`` as ``model`` with ``overrides``; the options are checked
    now. A preset may not take a registered model's name."""
    from ..models.registry import list_models
    if not isinstance(name, str) or not name or any(c in name for c in '/\\ '):
        raise ConfigError(f'preset name: expected a non-empty name without spaces or '
                          f'slashes, got {name!r}')
    if name in list_models():
        raise ConfigError(f'preset {name!r}: a registered model has that name')
    preset = Preset(name, model, dict(overrides or {}), description)
    preset.apply(Config())  # unknown model or option -> ConfigError now
    _PRESETS[name] = preset
    return preset


def unregister_preset(name: str) -> None:
    """Remove a registered preset (for tests and interactive sessions)."""
    _PRESETS.pop(name, None)


def get_preset(name: str) -> Preset:
    """The registered preset ``name``."""
    if name not in _PRESETS:
        raise ConfigError(f'unknown preset {name!r}{did_you_mean(name, _PRESETS)} '
                          f'(presets: {", ".join(_PRESETS) or "none"})')
    return _PRESETS[name]


def list_presets() -> List[Preset]:
    """The registered presets, in registration order."""
    return list(_PRESETS.values())


def resolve_row(name: str) -> Preset:
    """The configuration a row name stands for: a preset, or a registered model with
    its defaults."""
    from ..models.registry import list_models
    if name in _PRESETS:
        return _PRESETS[name]
    models = list_models()
    if name in models:
        return Preset(name, name, {}, 'default configuration')
    raise ConfigError(f'--models: unknown model or preset {name!r}'
                      f'{did_you_mean(name, list(models) + list(_PRESETS))} (models: '
                      f'{", ".join(models)}; presets: {", ".join(_PRESETS) or "none"})')


def load_presets(path: Union[str, os.PathLike]) -> List[Preset]:
    """Register the presets of a YAML file (see the module docstring); returns them."""
    d = read_yaml(path)
    out = []
    for name, spec in d.items():
        if not isinstance(spec, dict) or 'model' not in spec:
            raise ConfigError(f'{path}: preset {name!r}: expected a mapping with '
                              f"'model' (and optionally 'overrides', 'description')")
        unknown = set(spec) - {'model', 'overrides', 'description'}
        if unknown:
            raise ConfigError(f'{path}: preset {name!r}: unknown key '
                              f'{sorted(unknown)[0]!r} (expected model, overrides, '
                              f'description)')
        overrides = spec.get('overrides') or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f'{path}: preset {name!r}: overrides must be a mapping '
                              f'of dotted options to values')
        try:
            out.append(register_preset(str(name), str(spec['model']), overrides,
                                       str(spec.get('description') or '')))
        except ConfigError as e:
            raise ConfigError(f'{path}: preset {name!r}: {e}') from None
    return out


register_preset('mambarec-warmup', 'mambarec', {'model.cl_warmup_epochs': 10},
                'MambaRec, InfoNCE weight held at 0 for the first 10 epochs')
register_preset('mambarec-paper', 'mambarec', {'model.variant': 'paper'},
                "MambaRec as the paper's text describes it (variant 'paper')")
