"""The model registry: a model's name picks its class and its config dataclass.

Built-in models register themselves when their module is imported, which happens the
first time their name is asked for (:data:`~mambarec_pyg.config.BUILTIN_MODELS`);
:func:`list_models` imports them all. Your own model registers with :func:`register`
(see :class:`~mambarec_pyg.models.base.Recommender` for the interface)::

    from mambarec_pyg.models import Recommender, register

    @register('mf')
    class MF(Recommender):
        ...

The config dataclasses are registered with :mod:`mambarec_pyg.config` as well, which
finds them by name without importing this module.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Type

from ..config import (BUILTIN_MODELS, ModelConfig, load_builtin_model,
                      model_config_class, register_model_config, registered_models)

__all__ = ['register', 'get_model_class', 'get_config_class', 'list_models']

_MODELS: Dict[str, type] = {}
#: The built-in models: the paper's Table 2 in its order (most-popular first), then
#: BM3 and the rest of MMRec's zoo, MambaRec last; ``list_models`` lists them so, then
#: any other registered model.
PAPER_ORDER = tuple(BUILTIN_MODELS)


def register(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`~mambarec_pyg.models.base.Recommender`
    subclass under ``name`` (lower case, a Python identifier). The class must set
    ``config_class`` to its config dataclass (a
    :class:`~mambarec_pyg.config.ModelConfig` subclass); both get ``name``."""
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f'register: expected a lower-case identifier as the model '
                         f'name, got {name!r}')

    def decorate(cls: type) -> type:
        config_class = getattr(cls, 'config_class', None)
        if not (isinstance(config_class, type) and issubclass(config_class, ModelConfig)):
            raise TypeError(f'register({name!r}): {cls.__name__}.config_class must be '
                            f'a ModelConfig dataclass, got {config_class!r}')
        owner = config_class.__dict__.get('name')  # not inherited
        if owner and owner != name:
            raise ValueError(f'register({name!r}): {config_class.__name__} already '
                             f'belongs to model {owner!r}')
        load_builtin_model(name)  # a built-in name is taken even before its import
        existing = _MODELS.get(name)
        if existing is not None and existing is not cls and \
                f'{existing.__module__}.{existing.__qualname__}' != \
                f'{cls.__module__}.{cls.__qualname__}':
            raise ValueError(f'register: a model named {name!r} is already registered '
                             f'({existing.__module__}.{existing.__qualname__})')
        cls.name = name
        config_class.name = name
        _MODELS[name] = cls
        register_model_config(name, config_class)
        return cls

    return decorate


def get_model_class(name: str) -> Type:
    """The registered model class called ``name`` (a built-in model's module is
    imported on first use). Raises :class:`~mambarec_pyg.config.ConfigError` for an
    unknown name."""
    model_config_class(name)  # imports a built-in model; names the unknown ones
    return _MODELS[name]


def get_config_class(name: str) -> Type:
    """The config dataclass of the registered model ``name``."""
    return model_config_class(name)


def list_models() -> List[str]:
    """Registered model names: the built-in ones in the order of the paper's Table 2
    (:data:`PAPER_ORDER`), then the others in registration order."""
    names = registered_models()
    return [n for n in PAPER_ORDER if n in names] + \
        [n for n in names if n not in PAPER_ORDER]
