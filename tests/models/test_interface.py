"""The recommender interface and registry: a model registered outside the package goes
through config, CLI, checkpoints and serving like a built-in one."""
from __future__ import annotations

import ast
import csv
import io
import json
from pathlib import Path

import pytest
import torch

from support import MF, MFConfig

from mambarec_pyg.cli import main
from mambarec_pyg.config import Config, ConfigError
from mambarec_pyg.models import (MambaRec, MambaRecConfig, Popularity, Recommender,
                                 get_config_class, get_model_class, list_models,
                                 register)
from mambarec_pyg.train.checkpoint import load_checkpoint

UI = ('user', 'interacts', 'item')
PACKAGE = Path(__file__).resolve().parents[2] / 'mambarec_pyg'
FAST = ['--train.batch-size', '256', '--device', 'cpu', '--quiet',
        '--train.checkpoint-interval-s', '0']


def test_registry_knows_the_built_in_and_the_test_model():
    names = list_models()
    assert {'mambarec', 'popularity', 'test_mf'} <= set(names)
    assert get_model_class('test_mf') is MF and get_config_class('test_mf') is MFConfig
    assert MF.name == 'test_mf' and MFConfig.name == 'test_mf'
    with pytest.raises(ConfigError, match="unknown model 'mamba_rec'; did you mean "
                       "'mambarec'"):
        get_model_class('mamba_rec')


def test_register_rejects_bad_names_and_classes():
    with pytest.raises(ValueError, match='lower-case identifier'):
        register('Bad-Name')
    with pytest.raises(TypeError, match='config_class must be a ModelConfig'):
        @register('no_config')
        class NoConfig(Recommender):
            config_class = dict
    from dataclasses import dataclass

    @dataclass
    class OtherConfig(MFConfig):
        """A subclass of another model's config (its name is not inherited)."""

    with pytest.raises(ValueError, match="already registered"):
        @register('mambarec')
        class Other(Recommender):
            config_class = OtherConfig
    with pytest.raises(ValueError, match='MFConfig already belongs to model'):
        @register('another')
        class Another(Recommender):
            config_class = MFConfig


def test_config_picks_the_model_by_name():
    cfg = Config.from_dict({'data': {'synthetic': 'tiny'},
                            'model': {'name': 'test_mf', 'dim': 8}})
    assert isinstance(cfg.model, MFConfig) and cfg.model.dim == 8
    assert cfg.to_dict()['model'] == {'name': 'test_mf', 'dim': 8, 'dropout': 0.1,
                                      'reg_weight': 1e-4}
    assert isinstance(Config().model, MambaRecConfig)  # the default model
    with pytest.raises(ConfigError, match="unknown option 'model.dimm' of model "
                       "'test_mf'; did you mean 'dim'"):
        Config.from_dict({'model': {'name': 'test_mf', 'dimm': 8}})
    with pytest.raises(ConfigError, match="unknown option 'model.mmd_weight' of model "
                       "'test_mf'"):
        Config.from_dict({'model': {'name': 'test_mf', 'mmd_weight': 0.1}})
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        Config.from_dict({'model': {'name': 'nope'}})
    # switching the model drops the other model's options
    switched = Config().with_overrides({'model.name': 'test_mf', 'model.dim': 4})
    assert switched.model == MFConfig(dim=4)
    # a moved option says where it went
    with pytest.raises(ConfigError, match='model.cl_warmup_epochs'):
        Config.from_dict({'train': {'cl_warmup_epochs': 3}})


def test_a_registered_model_through_the_cli(tmp_path, tiny_data, capsys):
    out = tmp_path / 'mf'
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'test_mf',
                 '--model.dim', '8', '--train.max-epochs', '2', '--output', str(out),
                 *FAST]) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['model'] == 'test_mf' and results['epochs'] == 2
    assert results['config']['model'] == {'name': 'test_mf', 'dim': 8, 'dropout': 0.1,
                                          'reg_weight': 1e-4}
    assert list(results['history'][0]['loss']) == ['total', 'bpr', 'reg']
    assert [h['started'] for h in results['history']] == [0, 1]
    best = load_checkpoint(out / 'best.pt')
    assert best['model_name'] == 'test_mf' and best['config']['model']['dim'] == 8
    # evaluate rebuilds the model from the checkpoint
    capsys.readouterr()
    assert main(['evaluate', str(out), '--split', 'test', '--format', 'json',
                 '--device', 'cpu', '--quiet']) == 0
    got = json.loads(capsys.readouterr().out)['test']
    assert got['recall@20'] == pytest.approx(results['test']['recall@20'], abs=1e-6)
    # resume continues the same run
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'test_mf',
                 '--model.dim', '8', '--train.max-epochs', '3', '--output', str(out),
                 '--resume', *FAST]) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['epochs'] == 3 and len(results['history']) == 3
    # ... and refuses another model's settings
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'test_mf',
                 '--model.dim', '16', '--train.max-epochs', '4', '--output', str(out),
                 '--resume', *FAST]) == 2
    assert 'model.dim: 8 in the checkpoint, 16 now' in capsys.readouterr().err
    # recommend: no training item, the requested number
    assert main(['recommend', str(out), '--users', '0,1,2', '--k', '4', '--device',
                 'cpu']) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 12
    train = tiny_data[UI].edge_index
    seen = set(map(tuple, train.t().tolist()))
    assert not any((int(r['user']), int(r['item'])) in seen for r in rows)


def test_cli_help_shows_the_chosen_models_options(capsys):
    assert main(['train', '--model.name', 'test_mf', '--help']) == 0
    out = capsys.readouterr().out
    assert '--model.dim DIM' in out and '--model.mmd-weight WEIGHT' not in out
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'test_mf',
                 '--model.mmd-weight', '0.1']) == 2
    assert "unknown option '--model.mmd-weight'" in capsys.readouterr().err
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'mamba']) == 2
    assert "did you mean 'mambarec'" in capsys.readouterr().err


def test_models_command_lists_every_model(capsys):
    assert main(['models']) == 0
    out = capsys.readouterr().out
    for name in list_models():
        assert name in out
    assert main(['models', '--format', 'json']) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r['name'] for r in rows} == set(list_models())
    mamba = next(r for r in rows if r['name'] == 'mambarec')
    assert 'CIKM 2025' in mamba['reference'] and mamba['grid']


def test_popularity_is_evaluated_once_through_the_cli(tmp_path, tiny_data):
    out = tmp_path / 'pop'
    assert main(['train', '--synthetic', 'tiny', '--model.name', 'popularity',
                 '--output', str(out), '--device', 'cpu', '--quiet']) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['status'] == 'evaluated' and results['epochs'] == 1
    counts = torch.bincount(tiny_data[UI].edge_index[1],
                            minlength=tiny_data['item'].num_nodes)
    model = Popularity(tiny_data)
    scores = model.score(torch.zeros(5, dtype=torch.long), torch.arange(5))
    assert scores.tolist() == counts[:5].float().tolist()
    assert (out / 'best.pt').is_file() and not (out / 'last.pt').exists()


def test_constructors_do_no_io_and_no_knn_work_when_graphs_are_present(
        tiny_data, monkeypatch):
    config = MambaRecConfig()
    prepared = MambaRec.prepare(tiny_data, config)
    knn_edge_types = [et for et in prepared.edge_types if et[1].startswith('knn')]
    assert len(knn_edge_types) == 2 and 'edge_weight' in prepared[UI]

    def forbidden(*args, **kwargs):
        raise AssertionError('no kNN work or file access expected')

    import builtins
    import mambarec_pyg.data.graphs as graphs
    monkeypatch.setattr(graphs, '_knn_sym_normalized', forbidden)
    monkeypatch.setattr(builtins, 'open', forbidden)
    monkeypatch.setattr(torch, 'load', forbidden)
    model = MambaRec(prepared, config)
    assert model.graphs['item_graph_image'].shape == (60, 60)


def _imports_and_strings(path: Path):
    tree = ast.parse(path.read_text())
    names, strings = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or '')
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            strings.add(node.value)
    return names, strings


def test_train_and_cli_know_no_model_by_name():
    files = (sorted((PACKAGE / 'train').glob('*.py')) +
             sorted((PACKAGE / 'cli').glob('*.py')))
    for path in files:
        names, strings = _imports_and_strings(path)
        # (MambaRecError, the library's error base, names the library, not the model)
        assert not any('mambarec' in n.split('.')[-1].lower() or n == 'MambaRec'
                       for n in names if n and n != 'MambaRecError'), (path, names)
        # no loss part names of a particular model
        assert not {'bpr', 'cl', 'mmd', 'reg'} & strings, path
