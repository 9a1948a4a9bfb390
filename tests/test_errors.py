"""One error base on the ground floor, and a config module that imports no model.

* every error kind derives from :class:`MambaRecError` and keeps its old built-in base
  and import location;
* ``mambarec_pyg/errors.py`` imports nothing from the package, and ``config.py`` /
  ``utils.py`` no longer import the model registry or each other in a circle;
* a default ``Config()`` imports MambaRec's module and no other model's;
* the CLI and the experiment runner catch the one base.
"""
from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mambarec_pyg import errors
from mambarec_pyg.errors import MambaRecError

PACKAGE = Path(__file__).resolve().parents[1] / 'mambarec_pyg'

#: kind -> (where it could be imported from before, its built-in base)
KINDS = {
    'ConfigError': ('mambarec_pyg.config', ValueError),
    'DataError': ('mambarec_pyg.data.errors', ValueError),
    'NegativeSamplingError': ('mambarec_pyg.data.sampling', ValueError),
    'CheckpointError': ('mambarec_pyg.train.checkpoint', ValueError),
    'RunDirectoryBusy': ('mambarec_pyg.train.rundir', RuntimeError),
    'TrainingDivergedError': ('mambarec_pyg.train.trainer', RuntimeError),
}


@pytest.mark.parametrize('name', sorted(KINDS))
def test_every_kind_derives_from_the_base_and_keeps_its_place(name):
    module, builtin = KINDS[name]
    kind = getattr(errors, name)
    assert issubclass(kind, MambaRecError) and issubclass(kind, builtin)
    assert getattr(importlib.import_module(module), name) is kind
    assert name in errors.__all__


def _package_imports(path: Path):
    """Modules of this package that ``path`` imports (relative or absolute)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0 or (node.module or '').startswith('mambarec_pyg'):
                found.append('.' * node.level + (node.module or ''))
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith('mambarec_pyg')]
    return found


def test_errors_is_the_ground_floor():
    assert _package_imports(PACKAGE / 'errors.py') == []


def test_config_and_utils_import_no_registry_circle():
    config = _package_imports(PACKAGE / 'config.py')
    assert not [m for m in config if 'models' in m], config
    assert not [m for m in _package_imports(PACKAGE / 'utils.py') if 'config' in m]


_PROBE = r'''
import json, sys
import mambarec_pyg.config as config
before = sorted(m for m in sys.modules if m.startswith('mambarec_pyg.models'))
config.Config()
after = sorted(m for m in sys.modules if m.startswith('mambarec_pyg.models'))
from mambarec_pyg.config import MambaRecConfig, LightGCNConfig
named = sorted(m for m in sys.modules if m.startswith('mambarec_pyg.models.'))
from dataclasses import dataclass
from mambarec_pyg.models import Recommender, register
@dataclass
class OtherConfig(config.ModelConfig):
    """Another model's config."""
try:  # a built-in name is taken even before its module was imported
    @register('bpr')
    class Other(Recommender):
        config_class = OtherConfig
    taken = 'no'
except ValueError as e:
    taken = str(e)
print(json.dumps({'before': before, 'after': after, 'named': named,
                  'config': MambaRecConfig.__module__, 'taken': taken}))
'''


def test_a_default_config_imports_no_other_model():
    out = subprocess.run([sys.executable, '-c', _PROBE], capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out)
    assert got['before'] == []  # importing config imports no model
    # MambaRec's module and its own parts (the multi-view encoder it shares with
    # MGCN, the released checkpoint's names), no other model
    assert got['after'] == ['mambarec_pyg.models', 'mambarec_pyg.models.base',
                            'mambarec_pyg.models.mambarec',
                            'mambarec_pyg.models.multiview',
                            'mambarec_pyg.models.registry',
                            'mambarec_pyg.models.released']
    # a config class by name imports its own model's module only
    assert got['named'] == ['mambarec_pyg.models.base', 'mambarec_pyg.models.lightgcn',
                            'mambarec_pyg.models.mambarec',
                            'mambarec_pyg.models.multiview',
                            'mambarec_pyg.models.registry',
                            'mambarec_pyg.models.released']
    assert got['config'] == 'mambarec_pyg.models.mambarec'
    assert "a model named 'bpr' is already registered" in got['taken']


def test_the_cli_catches_the_base(monkeypatch, capsys):
    import mambarec_pyg.cli as cli

    class MyError(MambaRecError):
        """A kind the CLI has never heard of."""

    def fail(args):
        raise MyError('something the library reports')

    monkeypatch.setattr(cli, 'cmd_models', fail)
    assert cli.main(['models']) == 1
    err = capsys.readouterr().err.strip()
    assert err == 'mambarec models: error: something the library reports'


@pytest.fixture
def runner(tmp_path):
    from mambarec_pyg.experiments import synthetic_setup
    from mambarec_pyg.experiments.runner import Cell, Runner
    setup = synthetic_setup(tmp_path, quiet=True)
    dataset = setup.datasets[0]
    cell = Cell('synthetic-tiny/x/seed-0', dataset, 'x', 0, setup.base_config(dataset, 0))
    return Runner(setup, total=1), cell


@pytest.mark.parametrize('kind', ['CheckpointError', 'DataError',
                                  'TrainingDivergedError', 'NegativeSamplingError'])
def test_the_runner_reports_a_failed_run_and_goes_on(runner, monkeypatch, kind):
    from mambarec_pyg.train import experiment
    runner, cell = runner

    def fail(*args, **kwargs):
        raise getattr(errors, kind)('this run failed')

    monkeypatch.setattr(experiment, 'run', fail)
    res = runner._train(cell, runner.directory(cell))
    assert res.status == 'failed' and res.error.startswith(f'{kind}: this run failed')
    assert 'Traceback' in (runner.directory(cell) / 'error.txt').read_text()


@pytest.mark.parametrize('kind', ['ConfigError', 'RunDirectoryBusy'])
def test_the_runner_stops_on_what_every_run_would_meet(runner, monkeypatch, kind):
    from mambarec_pyg.train import experiment
    runner, cell = runner

    def fail(*args, **kwargs):
        raise getattr(errors, kind)('the options or the directory')

    monkeypatch.setattr(experiment, 'run', fail)
    with pytest.raises(getattr(errors, kind)):
        runner._train(cell, runner.directory(cell))
