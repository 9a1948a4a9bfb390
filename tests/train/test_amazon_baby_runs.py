"""examples/amazon_baby.py treats an earlier run in its directory as the CLI does:
it refuses to start over it unless told (--resume or --overwrite), and an interruption
before an epoch completes leaves the earlier record as it was, with a one-line message.

The "Baby" data are the tiny synthetic preset written as MMRec files."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / 'examples'
RECORD = ('results.json', 'last.pt', 'best.pt', 'config.yaml')


def _load_example():
    spec = importlib.util.spec_from_file_location('amazon_baby',
                                                  EXAMPLES / 'amazon_baby.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in RECORD}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.fixture(scope='module')
def baby():
    return _load_example()


@pytest.fixture()
def setup(tmp_path, tiny_data, baby, capsys):
    from mambarec_pyg.data import write_mmrec
    write_mmrec(tiny_data, tmp_path / 'data', 'baby')
    out = tmp_path / 'run'
    argv = ['--data', str(tmp_path / 'data'), '--device', 'cpu', '--quiet',
            '--output', str(out)]
    assert baby.main(argv + ['--epochs', '2']) == 0
    capsys.readouterr()
    return argv, out


def test_a_second_run_in_the_same_place_is_refused(baby, setup, capsys):
    argv, out = setup
    before = _record(out)
    assert baby.main(argv + ['--epochs', '2']) == 2
    line = _one_line(capsys.readouterr().err)
    assert 'already holds a run' in line and '--resume' in line
    assert _record(out) == before
    # --resume continues it
    assert baby.main(argv + ['--epochs', '3', '--resume']) == 0
    assert json.loads((out / 'results.json').read_text())['epochs'] == 3


@pytest.mark.parametrize('how', ['--overwrite', '--resume'])
def test_interrupted_before_an_epoch_keeps_the_record(baby, setup, capsys,
                                                      monkeypatch, how):
    from mambarec_pyg.models.mambarec import MambaRec
    argv, out = setup
    before = _record(out)
    monkeypatch.setattr(MambaRec, 'loss', _interrupt)  # Ctrl-C in the first batch
    assert baby.main(argv + ['--epochs', '3', how]) == 130
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith('amazon_baby.py: interrupted before an epoch completed')
    assert 'KeyError' not in captured.err and 'Traceback' not in captured.err
    assert _record(out) == before  # config.yaml included (it would say 3 epochs)
    assert json.loads((out / 'results.json').read_text())['epochs'] == 2


def test_interrupted_while_starting(baby, setup, capsys, monkeypatch):
    import mambarec_pyg.train.experiment as experiment
    argv, out = setup
    before = _record(out)
    monkeypatch.setattr(experiment, 'load_dataset', _interrupt)
    assert baby.main(argv + ['--epochs', '3', '--resume']) == 130
    assert _one_line(capsys.readouterr().err) == 'amazon_baby.py: interrupted'
    assert _record(out) == before
