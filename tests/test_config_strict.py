"""Configuration values that used to pass: a YAML key given twice (the last one won),
NaN or infinite numbers in float options, a thread count that crashes OpenMP."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, List, Tuple

import pytest

from mambarec_pyg.config import (MAX_NUM_THREADS, Config, ConfigError, DataConfig,
                                 TrainConfig, from_dict, read_yaml)
from mambarec_pyg.models import registry


# ---------------------------------------------------------------------------------
# Duplicate YAML keys
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('text, key, first, second', [
    ('data:\n  synthetic: tiny\n  synthetic: baby\n', 'synthetic', 2, 3),
    ('data:\n  synthetic: tiny\ntrain:\n  lr: 0.1\ndata:\n  synthetic: baby\n', 'data',
     1, 5),
    ('data: {synthetic: tiny}\nmodel:\n  name: mambarec\n  mmd_weight: 0.1\n'
     '  dropout: 0.1\n  mmd_weight: 0.2\n', 'mmd_weight', 4, 6),
    ('data: {synthetic: tiny, synthetic: baby}\n', 'synthetic', 1, 1),
])
def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path, text, key,
                                                               first, second):
    path = tmp_path / 'dup.yaml'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value) == (
        f"{path}: line {second}: key '{key}' given twice in the same mapping (first "
        f"on line {first}); each key may appear once (remove one of them)")
    with pytest.raises(ConfigError, match=f"key '{key}' given twice"):
        Config.from_yaml(path)


def test_the_same_key_in_different_mappings_and_merges_are_fine(tmp_path):
    path = tmp_path / 'ok.yaml'
    path.write_text('defaults: &d {lr: 0.01, batch_size: 64}\n'
                    'data: {synthetic: tiny}\n'
                    'model: {name: bpr, reg_weight: 0.001}\n'
                    'train:\n  <<: *d\n  lr: 0.02\n')
    d = read_yaml(path)
    assert d['train'] == {'lr': 0.02, 'batch_size': 64}  # a merge may be overridden
    d.pop('defaults')
    assert Config.from_dict(d).train.lr == 0.02


# ---------------------------------------------------------------------------------
# NaN and infinity in every float option
# ---------------------------------------------------------------------------------
def _has_float(tp: Any) -> bool:
    if tp is float:
        return True
    return any(_has_float(a) for a in typing.get_args(tp))


def _float_fields() -> List[Tuple[str, type, str]]:
    """``(section, config class, field)`` for every float option of every config
    dataclass: data, train and every registered model's."""
    classes = [('data', DataConfig), ('train', TrainConfig)]
    classes += [('model', registry.get_config_class(n)) for n in registry.list_models()]
    out = []
    for section, cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init and _has_float(hints[f.name]):
                out.append((section, cls, f.name))
    return out


FLOAT_FIELDS = _float_fields()


def _base_kwargs(cls: type) -> dict:
    return {'synthetic': 'tiny'} if cls is DataConfig else {}


def test_every_model_with_float_options_is_covered():
    sections = {(s, c.__name__) for s, c, _ in FLOAT_FIELDS}
    assert ('train', 'TrainConfig') in sections
    assert ('model', 'MambaRecConfig') in sections and len(sections) >= 10
    assert ('train', TrainConfig, 'lr') in FLOAT_FIELDS
    assert ('model', registry.get_config_class('mambarec'), 'mmd_bandwidth') in \
        FLOAT_FIELDS


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize('section, cls, name', FLOAT_FIELDS,
                         ids=[f'{c.__name__}.{n}' for _, c, n in FLOAT_FIELDS])
def test_non_finite_numbers_are_refused_in_every_float_option(section, cls, name, bad):
    where = f'{section}.{name}'
    # built directly ...
    with pytest.raises(ConfigError, match=rf'^{where}: expected a finite number, '
                       rf'got -?(nan|inf)$'):
        cls(**_base_kwargs(cls), **{name: bad})
    # ... and from a dictionary (YAML's .nan / .inf)
    d = {'synthetic': 'tiny'} if cls is DataConfig else {}
    d[name] = bad
    target = DataConfig if cls is DataConfig else TrainConfig if cls is TrainConfig \
        else registry.get_config_class(cls.name)
    if section == 'model':
        d['name'] = cls.name
    with pytest.raises(ConfigError, match=rf'{where}: expected a finite number'):
        from_dict(target, d, section)


def test_non_finite_inside_a_list_option():
    mambarec = registry.get_config_class('mambarec')
    with pytest.raises(ConfigError, match=r'^model\.mmd_bandwidth: expected a finite '
                       r'number, got \(1\.0, nan\)$'):
        mambarec(mmd_bandwidth=(1.0, math.nan))
    with pytest.raises(ConfigError, match=r'model\.mmd_bandwidth\[1\]: expected a '
                       r'finite number'):
        Config.from_dict({'model': {'mmd_bandwidth': [1.0, float('inf')]}})


def test_an_integer_beyond_the_float_range_is_refused_by_name():
    with pytest.raises(ConfigError, match=r'^train\.lr: expected a finite number'):
        Config.from_dict({'train': {'lr': 10 ** 400}})


def test_a_model_registered_by_a_user_is_checked_too():
    from mambarec_pyg.config import ModelConfig

    @dataclasses.dataclass
    class OwnChecks(ModelConfig):
        rate: float = 0.5

        def __post_init__(self) -> None:  # a bound that NaN slips past
            if self.rate < 0:
                raise ConfigError('model.rate: expected >= 0')

    @dataclasses.dataclass
    class NoChecks(ModelConfig):
        rate: float = 0.5

    for cls in (OwnChecks, NoChecks):
        with pytest.raises(ConfigError, match=r'^model\.rate: expected a finite'):
            cls(rate=math.nan)
        assert cls(rate=0.25).rate == 0.25
    with pytest.raises(ConfigError, match=r'expected >= 0'):
        OwnChecks(rate=-1.0)  # its own check still runs


# ---------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('value', [-1, MAX_NUM_THREADS + 1, 100000])
def test_the_thread_count_is_bounded(value):
    with pytest.raises(ConfigError, match=rf'^train\.num_threads: expected an integer '
                       rf"from 0 \(0: PyTorch's default\) to {MAX_NUM_THREADS}, got "
                       rf'{value}$'):
        TrainConfig(num_threads=value)


def test_thread_counts_within_the_bound_are_accepted():
    assert MAX_NUM_THREADS == 1024
    for value in (0, 1, 2, MAX_NUM_THREADS):
        assert TrainConfig(num_threads=value).num_threads == value
