"""Typed configuration: dataclasses in, YAML out, misspelt options fail loudly.

A run is configured by one :class:`Config` with three sections:

* :class:`DataConfig` -- which dataset to load (MMRec files or a synthetic preset);
* ``model`` -- the chosen model's own config dataclass (a :class:`ModelConfig`
  subclass, picked by its registered ``name``: ``mambarec`` by default; see
  :mod:`mambarec_pyg.models`);
* :class:`TrainConfig` -- the protocol (docs/reference.md §1).

Values are checked when a dataclass is built, so a bad value stops with a message
naming the field and what was expected; a NaN or infinite number is refused in every
float option of every section (:func:`check_finite`). Dictionaries (from YAML or the
command line) go through :func:`from_dict`, which rejects unknown keys with the
closest valid name; the ``model`` section is validated against the fields of the
model its ``name`` selects. YAML files are read by :func:`read_yaml`, which refuses a
key given twice in one mapping. Strings (command-line flags, grid values) are read by
:func:`parse_text`.

The model configs are found by name in a small registry here
(:func:`model_config_class`), filled by :func:`mambarec_pyg.models.register`. A
built-in model's module is imported the first time its name is asked for
(:data:`BUILTIN_MODELS`), so this module imports no model, and a default
:class:`Config` imports MambaRec's module alone.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar, Union

import yaml

from .errors import ConfigError
from .io import atomic_write_text
from .utils import did_you_mean

T = TypeVar('T')

__all__ = ['ConfigError', 'DataConfig', 'TrainConfig', 'ModelConfig', 'Config',
           'from_dict', 'to_dict', 'parse_text', 'describe_type', 'field_docs',
           'read_yaml', 'check_choice', 'check_positive_int', 'check_nonnegative_int',
           'check_range',
           'BUILTIN_MODELS', 'model_config_class', 'register_model_config',
           'registered_models', 'load_builtin_model', 'check_finite', 'MAX_NUM_THREADS']


#: Options that moved, with where they live now (named in the error message).
MOVED = {
    'train.cl_warmup_epochs': 'model.cl_warmup_epochs (an option of the mambarec '
                              'model: --model.cl-warmup-epochs N)',
}

#: The most CPU threads ``train.num_threads`` may ask for. Beyond the core count extra
#: threads only slow torch down, and far beyond it (``100000``) OpenMP fails to
#: create them and the process dies without a message; 1024 is above the hardware
#: threads of the largest single machines (two 192-core sockets with two threads per
#: core give 768), so no real machine is refused.
MAX_NUM_THREADS = 1024

# ---------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the interactions and item features come from.

    Exactly one of ``dataset`` (an MMRec-format directory ``root/dataset/``) and
    ``synthetic`` (a preset of :func:`mambarec_pyg.data.make_synthetic`) is used;
    ``dataset`` wins when both are set.
    """

    #: directory holding one folder per MMRec dataset.
    root: str = 'data'
    #: an MMRec dataset: ``root/dataset/dataset.inter`` plus ``*_feat.npy``.
    dataset: Optional[str] = None
    #: a synthetic preset: tiny, baby, sports, clothing, or the large clothing-x10,
    #: clothing-x100 (10x / 100x Clothing, generated in bounded memory).
    synthetic: Optional[str] = None
    #: seed of the synthetic data.
    synthetic_seed: int = 0
    #: width of the image block of clothing-x10 / clothing-x100; 0: the preset's
    #: (4096 at 10x, 512 at 100x).
    synthetic_image_dim: int = 0
    #: width of the text block of clothing-x10 / clothing-x100; 0: the preset's
    #: (384).
    synthetic_text_dim: int = 0
    #: modalities to use, by name (``image``, ``text``, ...); ``None`` = all found;
    #: an empty list = none (for models that use no item features).
    modalities: Optional[Tuple[str, ...]] = None
    #: train without a validation split (no model selection: the last epoch is
    #: reported). Without it, a dataset with no validation interactions stops with
    #: an error.
    allow_no_valid: bool = False
    #: how the item-item kNN graphs are searched: exact (blocked products, the
    #: default), faiss (exact, faiss IndexFlatIP), hnsw or ivf (approximate, for
    #: catalogs of millions); all but exact need faiss-cpu (the scale extra).
    knn_backend: str = 'exact'
    #: knn_backend hnsw: links per node.
    knn_hnsw_m: int = 32
    #: knn_backend hnsw: candidate list length while building the index.
    knn_hnsw_ef_construction: int = 200
    #: knn_backend hnsw: candidate list length of a search.
    knn_hnsw_ef_search: int = 128
    #: knn_backend ivf: k-means cells; 0: ceil(4 sqrt(items)).
    knn_ivf_nlist: int = 0
    #: knn_backend ivf: cells searched per item.
    knn_ivf_nprobe: int = 32
    #: faiss threads of the kNN search; 0: faiss's default (an hnsw index is then
    #: built on one thread, reproducibly; more threads build it faster but not
    #: reproducibly).
    knn_threads: int = 0
    #: reduce every modality wider than this to its first feature_dim principal
    #: components, once, before training (cached with the graphs); 0: raw features.
    feature_dim: int = 0
    #: storage of the feature tables: float32, or float16 (half the memory).
    feature_dtype: str = 'float32'

    def __post_init__(self) -> None:
        check_finite('data', self)
        from .data.knn import KNNBackend
        KNNBackend.from_config(self)  # checks the kNN options
        check_choice('data.feature_dtype', self.feature_dtype, ('float32', 'float16'))
        check_nonnegative_int('data.feature_dim', self.feature_dim)
        check_nonnegative_int('data.synthetic_image_dim', self.synthetic_image_dim)
        check_nonnegative_int('data.synthetic_text_dim', self.synthetic_text_dim)
        if self.dataset is None and self.synthetic is None:
            raise ConfigError("data: set either 'dataset' (an MMRec directory under "
                              "'root') or 'synthetic' (a preset name)")


@dataclass
class ModelConfig:
    """Base class of every model's configuration dataclass.

    A subclass holds the model's own options (each documented by a ``#:`` comment,
    which becomes its command-line help); the registry gives it its ``name``
    (:func:`mambarec_pyg.models.register`). ``GRID`` is the hyperparameter grid of
    ``mambarec search`` for the model: dotted option names (``model.X`` or
    ``train.X``) to lists of values.
    """

    name: ClassVar[str] = ''
    GRID: ClassVar[Dict[str, list]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every model config refuses NaN and infinite numbers before its own checks
        # (which may compare with bounds that NaN slips past): the subclass's
        # ``__post_init__`` is wrapped once.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get('__post_init__')
        if own is not None and not getattr(own, '_checks_finite', False):
            @functools.wraps(own)
            def __post_init__(self, *args: Any) -> None:
                check_finite('model', self)
                own(self, *args)

            __post_init__._checks_finite = True  # type: ignore[attr-defined]
            cls.__post_init__ = __post_init__  # type: ignore[assignment]

    def __post_init__(self) -> None:
        check_finite('model', self)


@dataclass
class TrainConfig:
    """The training and evaluation protocol (docs/reference.md §1)."""

    #: seed of the initial weights, sampling and dropout.
    seed: int = 999
    #: ``'auto'`` (CUDA when present), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
    device: str = 'auto'
    #: training triples per batch (also the regularisation denominator).
    batch_size: int = 2048
    #: users scored at a time in evaluation.
    eval_batch_size: int = 4096
    #: items scored at a time in evaluation, with a running top-K per user (bounds
    #: the scores held to eval_batch_size x (eval_item_block + K) for catalogs of
    #: millions); 0: all items at once.
    eval_item_block: int = 0
    #: validate during training on a fixed random sample of this many validation
    #: users (drawn once from the seed; faster model selection on large data); 0:
    #: every user. The test split is always evaluated over every user.
    valid_users: int = 0
    #: Adam learning rate.
    lr: float = 1e-3
    #: Adam weight decay (an L2 term on every parameter, as MMRec's Adam);
    #: ``None``: the model's protocol default (0 except SLMRec's 1e-4).
    weight_decay: Optional[float] = None
    #: learning rate times ``lr_decay ** (epoch / lr_decay_epochs)``; ``None``: the
    #: model's protocol default (0.96 for MambaRec and MGCN, 1.0 -- no decay -- for
    #: the other models, as in MMRec).
    lr_decay: Optional[float] = None
    #: epochs over which the learning rate falls by one factor ``lr_decay``.
    lr_decay_epochs: float = 50.0
    #: the most epochs a run trains.
    max_epochs: int = 1000
    #: early stopping (MMRec's rule): the counter of epochs without a strict
    #: improvement of ``valid_metric`` resets on improvement, and the run stops once
    #: it exceeds ``patience``.
    patience: int = 20
    #: epochs at the start during which patience does not count.
    patience_warmup: int = 0
    #: the early-stopping and model-selection metric, ``<metric>@K``.
    valid_metric: str = 'recall@20'
    #: the cut-offs K of the reported metrics.
    topk: Tuple[int, ...] = (5, 10, 20, 50)
    #: CPU threads for torch during training (``torch.set_num_threads``); 0 leaves
    #: PyTorch's default; at most 1024. Small datasets train fastest on 1 thread.
    num_threads: int = 0
    #: use PyTorch's deterministic algorithms while training
    #: (``torch.use_deterministic_algorithms``, warning where an op has none): the
    #: same seed then gives bitwise the same run, and a resumed run ends exactly where
    #: an uninterrupted one does. Without it, MambaRec's backward pass on a 2-thread
    #: CPU differed between identical runs at Baby scale (by about 1e-7 after four
    #: steps); with it, the step time was unchanged there. ``None`` (default): on
    #: for CPU training, off for CUDA (where its cost has not been measured).
    deterministic: Optional[bool] = None
    #: ``last.pt`` (everything needed to resume) is written at most once per this
    #: many seconds, and always at the end of a run or when it is interrupted;
    #: ``best.pt`` is written with it when the best epoch changed. 0: after every
    #: epoch. A crash (``kill -9``, power loss) loses at most this much training.
    checkpoint_interval_s: float = 60.0
    #: data parallelism under ``torchrun``: ``'auto'`` splits every global batch
    #: of ``batch_size`` triples over the processes ``torchrun`` started (one
    #: device per process; results do not depend on their number), ``'off'``
    #: ignores the launch and trains on one process. Without ``torchrun`` both
    #: train on one process.
    distributed: str = 'auto'

    def __post_init__(self) -> None:
        check_finite('train', self)
        check_choice('train.distributed', self.distributed, ('auto', 'off'))
        if not 0 <= self.num_threads <= MAX_NUM_THREADS:
            raise ConfigError(f'train.num_threads: expected an integer from 0 (0: '
                              f"PyTorch's default) to {MAX_NUM_THREADS}, got "
                              f'{self.num_threads!r}')
        for name in ('batch_size', 'eval_batch_size', 'max_epochs'):
            check_positive_int(f'train.{name}', getattr(self, name))
        for name in ('eval_item_block', 'valid_users'):
            check_nonnegative_int(f'train.{name}', getattr(self, name))
        for name in ('patience', 'patience_warmup'):
            if getattr(self, name) < 0:
                raise ConfigError(f'train.{name}: expected an integer >= 0, got '
                                  f'{getattr(self, name)!r}')
        if self.lr <= 0:
            raise ConfigError(f'train.lr: expected > 0, got {self.lr!r}')
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f'train.weight_decay: expected >= 0 or none, got '
                              f'{self.weight_decay!r}')
        if self.lr_decay is not None and not 0 < self.lr_decay <= 1:
            raise ConfigError(f'train.lr_decay: expected a factor in (0, 1] or none, '
                              f'got {self.lr_decay!r}')
        if self.lr_decay_epochs <= 0:
            raise ConfigError(f'train.lr_decay_epochs: expected > 0, got '
                              f'{self.lr_decay_epochs!r}')
        if self.checkpoint_interval_s < 0:
            raise ConfigError(f'train.checkpoint_interval_s: expected >= 0, got '
                              f'{self.checkpoint_interval_s!r}')
        if not self.topk or any(k <= 0 for k in self.topk):
            raise ConfigError(f'train.topk: expected positive integers, got {self.topk!r}')
        metric, _, k = self.valid_metric.lower().partition('@')
        check_choice('train.valid_metric (before @)', metric,
                ('recall', 'ndcg', 'precision', 'map'))
        if not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(f"train.valid_metric: expected '<metric>@K' with K in "
                              f"topk={self.topk}, got {self.valid_metric!r}")
        dev = self.device
        if not (dev in ('auto', 'cpu', 'cuda') or (dev.startswith('cuda:')
                                                    and dev[5:].isdigit())):
            raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda' or "
                              f"'cuda:N', got {dev!r}")


# ---------------------------------------------------------------------------------
# The model configs, by model name
# ---------------------------------------------------------------------------------
#: The built-in models: the paper's Table 2 in its order (most-popular first), then BM3
#: and the rest of MMRec's zoo, MambaRec last; each with the module (relative to this
#: package) that defines and registers it. A module is imported the first time its
#: model's name is asked for.
BUILTIN_MODELS: Dict[str, str] = {
    'popularity': '.models.popularity',
    'bpr': '.models.bpr',
    'lightgcn': '.models.lightgcn',
    'vbpr': '.models.vbpr',
    'mmgcn': '.models.mmgcn',
    'grcn': '.models.grcn',
    'slmrec': '.models.slmrec',
    'freedom': '.models.freedom',
    'mgcn': '.models.mgcn',
    'lgmrec': '.models.lgmrec',
    'bm3': '.models.bm3',
    'lattice': '.models.lattice',
    'dualgnn': '.models.dualgnn',
    'dragon': '.models.dragon',
    'mvgae': '.models.mvgae',
    'layergcn': '.models.layergcn',
    'selfcf': '.models.selfcf',
    'itemknncbf': '.models.itemknncbf',
    'smore': '.models.smore',
    'pgl': '.models.pgl',
    'damrs': '.models.damrs',
    'mmgcf': '.models.mmgcf',
    'mambarec': '.models.mambarec',
}

# model name -> its config dataclass, filled by register_model_config
_MODEL_CONFIGS: Dict[str, Type['ModelConfig']] = {}


def register_model_config(name: str, cls: Type['ModelConfig']) -> None:
    """Record ``cls`` as the config dataclass of model ``name``; called by
    :func:`mambarec_pyg.models.register`, which checks both."""
    _MODEL_CONFIGS[name] = cls


def load_builtin_model(name: str) -> None:
    """Import the module of the built-in model ``name`` (which registers it); nothing
    for other names."""
    module = BUILTIN_MODELS.get(name)
    if module is not None:
        importlib.import_module(module, __package__)


def registered_models() -> List[str]:
    """Every registered model name (the built-in ones imported first), in
    registration order."""
    for name in BUILTIN_MODELS:
        load_builtin_model(name)
    return list(_MODEL_CONFIGS)


def model_config_class(name: str) -> Type['ModelConfig']:
    """The config dataclass of the registered model ``name``. Raises
    :class:`ConfigError` naming the registered models (and the closest) for an
    unknown name."""
    if name not in _MODEL_CONFIGS:
        load_builtin_model(name)
    cls = _MODEL_CONFIGS.get(name)
    if cls is None:
        names = registered_models()
        raise ConfigError(f'model.name: unknown model {name!r}'
                          f'{did_you_mean(str(name), names)} (registered: '
                          f'{", ".join(sorted(names))}; see `mambarec models`)')
    return cls


def _default_model_config() -> 'ModelConfig':
    return model_config_class('mambarec')()


@dataclass
class Config:
    """Everything one run needs."""

    data: DataConfig = field(default_factory=lambda: DataConfig(synthetic='tiny'))
    model: ModelConfig = field(default_factory=_default_model_config)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig) or not type(self.model).name:
            raise ConfigError(f'model: expected the config dataclass of a registered '
                              f'model (e.g. MambaRecConfig()), got '
                              f'{type(self.model).__name__}')

    # -- dictionaries and YAML -----------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'Config':
        return from_dict(cls, d)

    def to_yaml(self, path: Union[str, os.PathLike, None] = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_yaml(cls, path: Union[str, os.PathLike]) -> 'Config':
        """Read a YAML config; every section is optional but ``data`` (a run must say
        which data it uses)."""
        d = read_yaml(path)
        if 'data' not in d:
            raise ConfigError(f"{path}: no 'data' section; say which data to use "
                              f"(data: {{dataset: NAME, root: DIR}} or data: "
                              f"{{synthetic: PRESET}})")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f'{path}: {e}') from None

    def with_overrides(self, overrides: Dict[str, Any]) -> 'Config':
        """A copy with dotted keys replaced, e.g. ``{'model.mmd_weight': 0.2}``.

        ``model.name`` switches to another model's config (its defaults, then the
        other ``model.*`` overrides).
        """
        d = self.to_dict()
        new_name = overrides.get('model.name')
        if new_name is not None and new_name != d['model']['name']:
            d['model'] = {'name': new_name}
        for key, value in overrides.items():
            section, _, name = key.partition('.')
            if section not in d or not name:
                raise ConfigError(f'unknown option {key!r}: expected '
                                  f'<data|model|train>.<field>')
            if name not in d[section] and not (section == 'model'):
                raise ConfigError(_unknown(f'{section}.{name}', name, d[section]))
            d[section][name] = list(value) if isinstance(value, tuple) else value
        return self.from_dict(d)


class _DuplicateKey(Exception):
    """A mapping of a YAML document names a key twice."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML
    keeps the last silently). Keys that a merge (``<<: *anchor``) brings in may
    still be overridden: that is what a merge is for."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == 'tag:yaml.org,2002:merge':
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: the base class says so
                    continue
                if first is not None:
                    raise _DuplicateKey(
                        f'line {line}: key {key!r} given twice in the same mapping '
                        f'(first on line {first}); each key may appear once (remove '
                        f'one of them)')
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """A YAML file's top-level mapping; every failure names the file. A key given
    twice in one mapping (at any depth) is refused, naming it and both lines."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'{path}: config file not found')
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:
        raise ConfigError(f'{path}: not a YAML text file (it is not valid UTF-8 text; '
                          f'expected a YAML mapping with sections data, model, '
                          f'train)') from None
    except OSError as e:
        raise ConfigError(f'{path}: cannot read ({e.strerror})') from None
    try:
        d = yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f'{path}: {e}') from None
    except yaml.YAMLError as e:
        raise ConfigError(f'{path}: not valid YAML ({e})') from None
    if d is None:
        raise ConfigError(f'{path}: the file is empty; expected a YAML mapping with '
                          f'sections data, model, train')
    if not isinstance(d, dict):
        raise ConfigError(f'{path}: expected a mapping with sections data, model, '
                          f'train; got {type(d).__name__}')
    return d


# ---------------------------------------------------------------------------------
# Generic strict conversion
# ---------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-friendly values (tuples become lists); a model config
    starts with its ``name``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {'name': type(obj).name} if isinstance(obj, ModelConfig) else {}
        out.update({f.name: to_dict(getattr(obj, f.name))
                    for f in dataclasses.fields(obj)})
        return out
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: Type[T], d: Dict[str, Any], path: str = '') -> T:
    """Build dataclass ``cls`` from ``d``; unknown keys and wrong types raise.

    For ``cls`` = :class:`ModelConfig` (or any registered model's config class),
    ``d['name']`` picks the model (default ``mambarec``).
    """
    if not isinstance(d, dict):
        raise ConfigError(f'{path or cls.__name__}: expected a mapping, got '
                          f'{type(d).__name__}')
    if isinstance(cls, type) and issubclass(cls, ModelConfig):
        return _model_config(d, path or 'model', cls)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in d.items():
        where = f'{path}.{key}' if path else str(key)
        if key not in names:
            raise ConfigError(_unknown(where, key, names))
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # e.g. a required field missing
        raise ConfigError(f'{path or cls.__name__}: {e}') from None


def _model_config(d: Dict[str, Any], path: str, base: type) -> ModelConfig:
    d = dict(d)
    name = d.pop('name', None)
    if name is None:
        name = base.name or 'mambarec'
    if not isinstance(name, str):
        raise ConfigError(f'{path}.name: expected a model name, got {name!r}')
    cls = model_config_class(name)
    if base is not ModelConfig and base.name and cls is not base:
        raise ConfigError(f'{path}.name: expected {base.name!r} for '
                          f'{base.__name__}, got {name!r}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in d.items():
        where = f'{path}.{key}'
        if key not in names:
            raise ConfigError(_unknown(where, key, names, model=name))
        kwargs[key] = _coerce(value, hints[key], where)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f'{path}: {e}') from None


class _NotFinite(ConfigError):
    """A number that is NaN or infinite."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, ModelConfig):
        if isinstance(value, ModelConfig):
            return value
        return from_dict(tp, value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        # Prefer the scalar reading for scalars and the tuple reading for lists.
        for arg in sorted((a for a in args if a is not type(None)),
                          key=lambda a: typing.get_origin(a) is not tuple
                          if isinstance(value, (list, tuple)) else
                          typing.get_origin(a) is tuple):
            try:
                return _coerce(value, arg, where)
            except _NotFinite:
                raise  # a number of the right kind, but NaN or infinite
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f'{where}: expected {describe_type(tp)}, got {value!r}')
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list of {_type_name(tp)}, got '
                              f'{value!r}')
        item_tp = typing.get_args(tp)[0]
        return tuple(_coerce(v, item_tp, f'{where}[{i}]') for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f'{where}: expected true or false, got {value!r}')
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f'{where}: expected an integer, got {value!r}')
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond the float range
                number = math.inf
            if not math.isfinite(number):
                raise _NotFinite(f'{where}: expected a finite number, got {value!r}')
            return number
        raise ConfigError(f'{where}: expected a number, got {value!r}')
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{where}: expected a string, got {value!r}')
    return value


# ---------------------------------------------------------------------------------
# Strings (command-line flags, grid values)
# ---------------------------------------------------------------------------------
_NONE = ('none', 'null', '~')
_TRUE = ('true', 'yes', 'on', '1')
_FALSE = ('false', 'no', 'off', '0')


def describe_type(tp: Any) -> str:
    """What a value of type ``tp`` looks like, in words."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        text = ' or '.join(describe_type(a) for a in args)
        return text + (' or none' if type(None) in typing.get_args(tp) else '')
    if origin is tuple:
        item = typing.get_args(tp)[0]
        plural = {int: 'integers', float: 'numbers', str: 'strings'}.get(item)
        return f'a comma-separated list of {plural or describe_type(item)}'
    return {int: 'an integer', float: 'a number', bool: 'true or false',
            str: 'a string'}.get(tp, getattr(tp, '__name__', str(tp)))


def parse_text(text: str, tp: Any) -> Any:
    """``text`` (a command-line value) as a value of type ``tp``.

    Numbers, ``true``/``false``, ``none`` for an empty optional, comma-separated
    lists for tuples (``''`` or ``,`` for an empty list). Raises :class:`ValueError`
    naming what was expected.
    """
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
                return parse_text(text, arg)
            except ValueError:
                continue
        raise ValueError(f'expected {describe_type(tp)}, got {text!r}')
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if text.strip() in ('', ','):
            return ()
        parts = [p.strip() for p in text.split(',') if p.strip()]
        if not parts:
            raise ValueError(f'expected {describe_type(tp)}, got {text!r}')
        return tuple(parse_text(p, item) for p in parts)
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


def field_docs(cls: type) -> Dict[str, str]:
    """The ``#:`` comment lines above each field of dataclass ``cls``, joined (none
    for a class whose source is not available, e.g. defined in a notebook)."""
    docs: Dict[str, str] = {}
    pending = []
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return docs
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith('#:'):
            pending.append(stripped[2:].strip())
            continue
        name = stripped.split(':', 1)[0]
        if pending and name.isidentifier():
            docs[name] = ' '.join(pending)
        pending = []
    return docs


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return ' or '.join(_type_name(a) for a in typing.get_args(tp)
                           if a is not type(None))
    if origin is tuple:
        return f'{_type_name(typing.get_args(tp)[0])}s'
    return getattr(tp, '__name__', str(tp))


def _unknown(where: str, key: Any, valid, model: Optional[str] = None) -> str:
    moved = MOVED.get(where)
    if moved:
        return f'option {where!r} has moved to {moved}'
    of = f' of model {model!r}' if model else ''
    return (f'unknown option {where!r}{of}{did_you_mean(str(key), valid)} (valid: '
            f'{", ".join(sorted(valid))})')


def check_choice(where: str, value: Any, choices) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f'{where}: expected one of {", ".join(map(repr, choices))}, '
                          f'got {value!r}')


def check_finite(section: str, config: Any) -> None:
    """Raise :class:`ConfigError` naming ``section.field`` if a float field of the
    dataclass instance ``config`` (or a number in a tuple field) is NaN or
    infinite. Called by every config dataclass when it is built."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name, None)
        for v in value if isinstance(value, (tuple, list)) else (value, ):
            if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) \
                    and not math.isfinite(v):
                raise ConfigError(f'{section}.{f.name}: expected a finite number, got '
                                  f'{value!r}')


def check_positive_int(where: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer > 0."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f'{where}: expected a positive integer, got {value!r}')


def check_nonnegative_int(where: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an integer >= 0 (e.g. a
    number of layers)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f'{where}: expected an integer >= 0, got {value!r}')


def check_range(where: str, value: Any, low: Optional[float] = None,
                high: Optional[float] = None, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (``<`` where open;
    ``None`` bounds are not checked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = '' if low is None else f'{"(" if low_open else "["}{low}'
        hi = '' if high is None else f'{high}{")" if high_open else "]"}'
        want = (f'a number in {lo}, {hi}' if low is not None and high is not None else
                f'a number {">" if low_open else ">="} {low}' if low is not None else
                f'a number {"<" if high_open else "<="} {high}')
        raise ConfigError(f'{where}: expected {want}, got {value!r}')


def __getattr__(name: str) -> Any:
    # Model config classes live with their models; ``from mambarec_pyg.config import
    # MambaRecConfig`` keeps working (the model's own module first, then every one).
    if name.endswith('Config') and name[:-6]:
        load_builtin_model(name[:-6].lower())  # LightGCNConfig: lightgcn's module
        found = [c for c in _MODEL_CONFIGS.values() if c.__name__ == name] or \
            [_MODEL_CONFIGS[n] for n in registered_models()
             if _MODEL_CONFIGS[n].__name__ == name]
        if found:
            return found[0]
    if name == 'RESUMABLE_CHANGES':  # the run-directory rule owns it now
        from .train.rundir import RESUMABLE_CHANGES
        return RESUMABLE_CHANGES
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
