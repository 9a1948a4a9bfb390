"""The model registry: a model's name picks its class and its config dataclass.

Built-in models register themselves when :mod:`mambarec_pyg.models` is imported;
your own model registers with :func:`register` (see
:class:`~mambarec_pyg.models.base.Recommender` for the interface)::

    from mambarec_pyg.models import Recommender, register

    @register('mf')
    class MF(Recommender):
        ...
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Type

__all__ = ['register', 'get_model_class', 'get_config_class', 'list_models']

_MODELS: Dict[str, type] = {}
_LOADED = False
#: The built-in models in the order of the paper's Table 2 (most-popular first);
#: ``list_models`` lists them so, then any other registered model.
PAPER_ORDER = ('popularity', 'bpr', 'lightgcn', 'vbpr', 'mmgcn', 'grcn', 'slmrec',
               'freedom', 'mgcn', 'lgmrec', 'bm3', 'dualgnn', 'dragon', 'layergcn',
               'selfcf', 'smore', 'pgl', 'damrs', 'mmgcf',
               'mambarec')


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        importlib.import_module('mambarec_pyg.models')


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`~mambarec_pyg.models.base.Recommender`
    subclass under ``name`` (lower case, a Python identifier). The class must set
    ``config_class`` to its config dataclass (a
    :class:`~mambarec_pyg.config.ModelConfig` subclass); both get ``name``."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f'register: expected a lower-case identifier as the model '
                         f'name, got {name!r}')

    def decorate(cls: type) -> type:
        from ..config import ModelConfig
        config_class = getattr(cls, 'config_class', None)
        if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
            raise TypeError(f'register({name!r}): {cls.__name__}.config_class must be '
                            f'a ModelConfig dataclass, got {config_class!r}')
        owner = config_class.__dict__.get('name')  # not inherited
        if owner and owner != name:
            raise ValueError(f'register({name!r}): {config_class.__name__} already '
                             f'belongs to model {owner!r}')
        existing = _MODELS.get(name)
        if existing is not None and existing is not cls and \
                f'{existing.__module__}.{existing.__qualname__}' != \
                f'{cls.__module__}.{cls.__qualname__}':
            raise ValueError(f'register: a model named {name!r} is already registered '
                             f'({existing.__module__}.{existing.__qualname__})')
        cls.name = name
        config_class.name = name
        _MODELS[name] = cls
        return cls

    return decorate


def get_model_class(name: str) -> Type:
    """The registered model class called ``name``."""
    _load_builtin()
    cls = _MODELS.get(name)
    if cls is None:
        from ..config import ConfigError
        from ..utils import did_you_mean
        raise ConfigError(f'model.name: unknown model {name!r}'
                          f'{did_you_mean(str(name), _MODELS)} (registered: '
                          f'{", ".join(sorted(_MODELS))}; see `mambarec models`)')
    return cls


def get_config_class(name: str) -> Type:
    """The config dataclass of the registered model ``name``."""
    return get_model_class(name).config_class


def list_models() -> List[str]:
    """Registered model names: the built-in ones in the order of the paper's Table 2
    (:data:`PAPER_ORDER`), then the others in registration order."""
    _load_builtin()
    first = [n for n in PAPER_ORDER if n in _MODELS]
    return first + [n for n in _MODELS if n not in PAPER_ORDER]
