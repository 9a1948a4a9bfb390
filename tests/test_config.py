import pytest

from mambarec_pyg.config import (Config, ConfigError, DataConfig, MambaRecConfig,
                                 TrainConfig)


def test_yaml_round_trip(tmp_path):
    cfg = Config(data=DataConfig(synthetic='tiny'),
                 model=MambaRecConfig(mmd_bandwidth=(1.0, 2.0), reduction_factor=4),
                 train=TrainConfig(topk=(10, 20), valid_metric='ndcg@10'))
    path = tmp_path / 'c.yaml'
    cfg.to_yaml(path)
    assert Config.from_yaml(path) == cfg


def test_scalar_and_list_bandwidth():
    assert Config.from_dict({'model': {'mmd_bandwidth': 2}}).model.mmd_bandwidth == 2.0
    assert Config.from_dict({'model': {'mmd_bandwidth': [1, 2]}}).model.mmd_bandwidth \
        == (1.0, 2.0)


@pytest.mark.parametrize('overrides, match', [
    ({'model.mmd_wieght': 0.1}, "did you mean 'mmd_weight'"),
    ({'modle.mmd_weight': 0.1}, 'unknown option'),
    ({'model.variant': 'released'}, "model.variant: expected one of 'reference', 'paper'"),
    ({'model.dropout': 1.5}, 'model.dropout'),
    ({'model.embedding_size': 0}, 'model.embedding_size: expected a positive integer'),
    ({'model.mmd_bandwidth': [1.0, -1.0]}, 'model.mmd_bandwidth'),
    ({'model.local_alignment': 'yes'}, 'expected true or false'),
    ({'train.valid_metric': 'recall@7'}, 'train.valid_metric'),
    ({'train.valid_metric': 'hits@20'}, 'train.valid_metric'),
    ({'train.device': 'gpu'}, 'train.device'),
    ({'train.batch_size': 1.5}, 'train.batch_size: expected an integer'),
])
def test_bad_options_fail_loudly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        Config().with_overrides(overrides)


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('data:\n  synthetic: tiny\nmodel:\n  knn: 5\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown option 'model\.knn'"):
        Config.from_yaml(path)
    with pytest.raises(ConfigError, match='not found'):
        Config.from_yaml(tmp_path / 'missing.yaml')


def test_data_needs_a_source():
    with pytest.raises(ConfigError, match='either'):
        DataConfig()


def test_every_option_is_documented():
    from mambarec_pyg.config import field_docs
    import dataclasses
    for cls in (DataConfig, MambaRecConfig, TrainConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f'{cls.__name__}: fields without a #: comment: {missing}'


def test_field_docs_of_a_class_without_source():
    # a config class defined in a notebook or by exec has no source file: the CLI's
    # help must still build (no docs rather than a crash)
    from mambarec_pyg.config import field_docs
    namespace = {}
    exec('from dataclasses import dataclass\n'
         '@dataclass\n'
         'class Made:\n'
         '    #: a field\n'
         '    x: int = 1\n', namespace)
    assert field_docs(namespace['Made']) == {}
    assert field_docs(DataConfig)['root']  # classes with source keep their docs
