"""Typed configuration: dataclasses in, YAML out, misspelt options fail loudly.

Every option of the library lives in one of three dataclasses:

* :class:`DataConfig` -- which dataset to load (MMRec files or a synthetic preset),
* :class:`MambaRecConfig` -- the model (docs/reference.md §2-§6),
* :class:`TrainConfig` -- the protocol (docs/reference.md §1),

grouped by :class:`Config`. Values are checked when a dataclass is built, so a bad
value stops with a message naming the field and what was expected. Dictionaries (from
YAML or the command line) go through :func:`from_dict`, which rejects unknown keys with
the closest valid name.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Type, TypeVar, Union

import yaml

from .io import atomic_write_text

T = TypeVar('T')


class ConfigError(ValueError):
    """A configuration value or key is not what the library expects."""


# ---------------------------------------------------------------------------------
# The three sections
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
    #: a synthetic preset: tiny, baby, sports, clothing.
    synthetic: Optional[str] = None
    #: seed of the synthetic data.
    synthetic_seed: int = 0
    #: modalities to use, by name (``image``, ``text``, ...); ``None`` = all found.
    modalities: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        if self.dataset is None and self.synthetic is None:
            raise ConfigError("data: set either 'dataset' (an MMRec directory under "
                              "'root') or 'synthetic' (a preset name)")
        if self.modalities is not None and len(self.modalities) == 0:
            raise ConfigError("data.modalities: expected at least one modality name "
                              "or null for all")


@dataclass
class MambaRecConfig:
    """The model. Defaults reproduce the released implementation (docs/reference.md)."""

    #: ``'reference'`` computes what the published numbers were produced with;
    #: ``'paper'`` what the paper's text describes (docs/reference.md §6).
    variant: str = 'reference'
    #: width d of the user and item embeddings.
    embedding_size: int = 64
    #: LightGCN layers on the user-item graph (the content view).
    ui_layers: int = 4
    #: propagation layers on each item-item kNN graph (the modality views).
    ii_layers: int = 1
    #: neighbours kept per item in the item-item graphs (the item itself included).
    knn_k: int = 10
    #: the dimensionality-reduction factor r.
    reduction_factor: int = 8
    #: modalities whose projection is reduced; ``None`` = the variant's choice
    #: (reference: ``image`` only, two stages; paper: every modality).
    reduced_modalities: Optional[Tuple[str, ...]] = None
    #: DREAM on (local alignment); ``False`` is the paper's "w/o LA" ablation.
    local_alignment: bool = True
    #: MMD + InfoNCE on (global alignment); ``False`` is the paper's "w/o GA" ablation.
    global_alignment: bool = True
    #: raw feature tables are trainable parameters (released behaviour).
    trainable_features: bool = True
    #: dropout after the shared LayerNorm.
    dropout: float = 0.2
    #: weight of the L2 penalty on the batch's final embeddings.
    reg_weight: float = 1e-4
    #: weight of the InfoNCE term.
    cl_weight: float = 0.01
    #: InfoNCE temperature.
    cl_temperature: float = 0.2
    #: weight of the MMD term.
    mmd_weight: float = 0.15
    #: Gaussian-kernel bandwidth sigma; several values give a sum of kernels.
    mmd_bandwidth: Union[float, Tuple[float, ...]] = 1.5
    #: sparse propagation: ``'fused'`` (autograd functions with a precomputed
    #: transpose; same values, faster) or ``'pyg'`` (PyG's LGConv / MessagePassing).
    propagation: str = 'fused'
    #: rows the fusion step runs on inside ``loss()``: ``'batch'`` (only the rows the
    #: loss reads; same values, faster) or ``'all'`` (every node, then indexed).
    fusion_rows: str = 'batch'
    #: compute a two-stage projection ``D -> D/r -> d`` as one composed affine map
    #: (same function, ``r``-times fewer multiply-adds on the feature table).
    compose_projection: bool = True

    def __post_init__(self) -> None:
        _choice('model.variant', self.variant, ('reference', 'paper'))
        _choice('model.propagation', self.propagation, ('fused', 'pyg'))
        _choice('model.fusion_rows', self.fusion_rows, ('batch', 'all'))
        for name in ('embedding_size', 'knn_k', 'reduction_factor'):
            _positive_int(f'model.{name}', getattr(self, name))
        for name in ('ui_layers', 'ii_layers'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{getattr(self, name)!r}')
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f'model.dropout: expected a probability in [0, 1), got '
                              f'{self.dropout!r}')
        for name in ('reg_weight', 'cl_weight', 'mmd_weight'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected a weight >= 0, got '
                                  f'{getattr(self, name)!r}')
        if self.cl_temperature <= 0:
            raise ConfigError(f'model.cl_temperature: expected > 0, got '
                              f'{self.cl_temperature!r}')
        bws = self.mmd_bandwidth if isinstance(self.mmd_bandwidth, tuple) else (
            self.mmd_bandwidth, )
        if len(bws) == 0 or any(b <= 0 for b in bws):
            raise ConfigError(f'model.mmd_bandwidth: expected one or more values > 0, '
                              f'got {self.mmd_bandwidth!r}')


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
    #: Adam learning rate.
    lr: float = 1e-3
    #: learning rate times ``lr_decay ** (epoch / lr_decay_epochs)``.
    lr_decay: float = 0.96
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
    #: epochs at the start with the InfoNCE weight held at 0 (docs/reference.md
    #: §8). 0 is the released behaviour. Measured (seed 999, B = 2048, defaults
    #: otherwise): on the Baby-scale synthetic preset, 5 epochs with 0 kept BPR at
    #: 0.6925 -> 0.6918 and valid Recall@20 fell from 0.116 (epoch 0) to 0.058-0.068,
    #: while 5 warm-up epochs took BPR 0.683 -> 0.299 and valid Recall@20 0.151 ->
    #: 0.207; with 3 warm-up epochs InfoNCE, once on, did not pin BPR again (7
    #: epochs: BPR 0.683 -> 0.214, valid Recall@20 0.152 -> 0.244, still rising).
    #: On ``tiny`` the effect is small (B = 2048, 40 epochs: best valid
    #: Recall@20 0.725 without vs 0.745 with 10 warm-up epochs; B = 128, 20 epochs:
    #: 0.750 vs 0.755 with 5).
    cl_warmup_epochs: int = 0
    #: the early-stopping and model-selection metric, ``<metric>@K``.
    valid_metric: str = 'recall@20'
    #: the cut-offs K of the reported metrics.
    topk: Tuple[int, ...] = (5, 10, 20, 50)
    #: CPU threads for torch during training (``torch.set_num_threads``); 0 leaves
    #: PyTorch's default. Small datasets train fastest on 1 thread.
    num_threads: int = 0
    #: use PyTorch's deterministic algorithms while training
    #: (``torch.use_deterministic_algorithms``, warning where an op has none): the
    #: same seed then gives bitwise the same run, and a resumed run ends exactly where
    #: an uninterrupted one does. Without it, MambaRec's backward pass on a 2-thread
    #: CPU differed between identical runs at Baby scale (by about 1e-7 after four
    #: steps); with it, the step time was unchanged there. ``None`` (default): on
    #: for CPU training, off for CUDA (where its cost has not been measured).
    deterministic: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.num_threads < 0:
            raise ConfigError(f'train.num_threads: expected an integer >= 0 (0: '
                              f"PyTorch's default), got {self.num_threads!r}")
        for name in ('batch_size', 'eval_batch_size', 'max_epochs'):
            _positive_int(f'train.{name}', getattr(self, name))
        for name in ('patience', 'patience_warmup', 'cl_warmup_epochs'):
            if getattr(self, name) < 0:
                raise ConfigError(f'train.{name}: expected an integer >= 0, got '
                                  f'{getattr(self, name)!r}')
        if self.lr <= 0:
            raise ConfigError(f'train.lr: expected > 0, got {self.lr!r}')
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f'train.lr_decay: expected a factor in (0, 1], got '
                              f'{self.lr_decay!r}')
        if self.lr_decay_epochs <= 0:
            raise ConfigError(f'train.lr_decay_epochs: expected > 0, got '
                              f'{self.lr_decay_epochs!r}')
        if not self.topk or any(k <= 0 for k in self.topk):
            raise ConfigError(f'train.topk: expected positive integers, got {self.topk!r}')
        metric, _, k = self.valid_metric.lower().partition('@')
        _choice('train.valid_metric (before @)', metric,
                ('recall', 'ndcg', 'precision', 'map'))
        if not k.isdigit() or int(k) not in self.topk:
            raise ConfigError(f"train.valid_metric: expected '<metric>@K' with K in "
                              f"topk={self.topk}, got {self.valid_metric!r}")
        dev = self.device
        if not (dev in ('auto', 'cpu', 'cuda') or (dev.startswith('cuda:')
                                                    and dev[5:].isdigit())):
            raise ConfigError(f"train.device: expected 'auto', 'cpu', 'cuda' or "
                              f"'cuda:N', got {dev!r}")


@dataclass
class Config:
    """Everything one run needs."""

    data: DataConfig = field(default_factory=lambda: DataConfig(synthetic='tiny'))
    model: MambaRecConfig = field(default_factory=MambaRecConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

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
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f'{path}: config file not found')
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f'{path}: not valid YAML ({e})') from None
        if not isinstance(d, dict):
            raise ConfigError(f'{path}: expected a mapping with sections data, model, '
                              f'train; got {type(d).__name__}')
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f'{path}: {e}') from None

    def with_overrides(self, overrides: Dict[str, Any]) -> 'Config':
        """A copy with dotted keys replaced, e.g. ``{'model.mmd_weight': 0.2}``."""
        d = self.to_dict()
        for key, value in overrides.items():
            section, _, name = key.partition('.')
            if section not in d or not name:
                raise ConfigError(f'unknown option {key!r}: expected '
                                  f'<data|model|train>.<field>')
            if name not in d[section]:
                raise ConfigError(_unknown(f'{section}.{name}', name, d[section]))
            d[section][name] = value
        return self.from_dict(d)


# ---------------------------------------------------------------------------------
# Generic strict conversion
# ---------------------------------------------------------------------------------
def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML-friendly values (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


def from_dict(cls: Type[T], d: Dict[str, Any], path: str = '') -> T:
    """Build dataclass ``cls`` from ``d``; unknown keys and wrong types raise."""
    if not isinstance(d, dict):
        raise ConfigError(f'{path or cls.__name__}: expected a mapping, got '
                          f'{type(d).__name__}')
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


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
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
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f'{where}: expected {_type_name(tp)}, got {value!r}')
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list of {_type_name(tp)}, got '
                              f'{value!r}')
        args = typing.get_args(tp)
        item_tp = args[0]
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
            return float(value)
        raise ConfigError(f'{where}: expected a number, got {value!r}')
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f'{where}: expected a string, got {value!r}')
    return value


def field_docs(cls: type) -> Dict[str, str]:
    """The ``#:`` comment lines above each field of dataclass ``cls``, joined."""
    import inspect
    docs: Dict[str, str] = {}
    pending = []
    for line in inspect.getsource(cls).splitlines():
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


def _unknown(where: str, key: Any, valid) -> str:
    close = difflib.get_close_matches(str(key), list(valid), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ''
    return (f'unknown option {where!r}{hint} (valid: {", ".join(sorted(valid))})')


def _choice(where: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f'{where}: expected one of {", ".join(map(repr, choices))}, '
                          f'got {value!r}')


def _positive_int(where: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f'{where}: expected a positive integer, got {value!r}')
