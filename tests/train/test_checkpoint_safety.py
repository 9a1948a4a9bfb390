"""Loading a checkpoint never runs code from the file.

A crafted pickle whose ``__reduce__`` would create a marker file is refused by
``mambarec evaluate``, ``mambarec recommend`` and ``mambarec train --resume`` with a
one-line message, and the marker never appears. Checkpoints of the older format 1
(NumPy RNG state, readable only by the unrestricted unpickler) are read only with
``--trust-checkpoint`` / ``trusted=True``.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import shlex
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mambarec_pyg.cli import main
from mambarec_pyg.train.checkpoint import (FORMAT, CheckpointError, load_checkpoint,
                                           set_rng_state)

#: a pickle of the default protocol and of protocol 2, and a torch.save archive
FORMS = ['pickle', 'pickle2', 'torch']
FAST = ['--train.max-epochs', '1', '--train.batch-size', '256', '--device', 'cpu',
        '--quiet']


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(self.marker)}', )


def _craft(path: Path, marker: Path, form: str) -> Path:
    """A malicious "checkpoint": a plain pickle, or a torch.save zip whose dict
    looks like a mambarec_pyg checkpoint but holds the payload."""
    if form.startswith('pickle'):
        protocol = int(form[6:]) if form[6:] else pickle.DEFAULT_PROTOCOL
        with open(path, 'wb') as f:
            pickle.dump({'format': FORMAT, 'model': _Payload(marker)}, f,
                        protocol=protocol)
    else:
        torch.save({'format': FORMAT, 'kind': 'best', 'model_name': 'mambarec',
                    'model': {'w': torch.zeros(2)}, 'config': {'x': _Payload(marker)}},
                   path)
    return path


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    return lines[0]


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('safety') / 'run'
    assert main(['train', '--synthetic', 'tiny', '--output', str(out), *FAST]) == 0
    return out


@pytest.mark.parametrize('form', FORMS)
def test_the_payload_is_live(tmp_path, form):
    # The control: the unrestricted unpickler does run it (so the tests below
    # would fail on a loader without weights_only).
    marker = tmp_path / 'marker'
    evil = _craft(tmp_path / 'evil.pt', marker, form)
    with contextlib.suppress(RuntimeError):  # a plain pickle: 'invalid magic number'
        torch.load(evil, weights_only=False)  # ... after running the payload
    assert marker.exists()


@pytest.mark.parametrize('form', FORMS)
def test_evaluate_refuses_a_crafted_pickle(tmp_path, capsys, form):
    marker = tmp_path / 'marker'
    evil = _craft(tmp_path / 'evil.pt', marker, form)
    assert main(['evaluate', str(evil), '--device', 'cpu', '--quiet']) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(evil) in line and 'refused' in line and 'run code' in line
    assert not marker.exists()


@pytest.mark.parametrize('form', FORMS)
def test_recommend_refuses_a_crafted_pickle(tmp_path, capsys, form):
    marker = tmp_path / 'marker'
    evil = _craft(tmp_path / 'evil.pt', marker, form)
    assert main(['recommend', str(evil), '--users', '0', '--device', 'cpu']) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(evil) in line and 'refused' in line
    assert not marker.exists()
    assert capsys.readouterr().out == ''


def test_resume_refuses_a_crafted_last_pt(tmp_path, capsys):
    marker = tmp_path / 'marker'
    out = tmp_path / 'run'
    out.mkdir()
    _craft(out / 'last.pt', marker, 'torch')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(['train', '--synthetic', 'tiny', '--output', str(out), '--resume',
                 *FAST]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(out / 'last.pt') in line and 'refused' in line
    assert not marker.exists()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != '.lock'}
    assert after == before  # no config.yaml, train.log or results written


def test_the_command_refuses_it_in_one_line(tmp_path, capsys):
    # As a user sees it: no warning from torch's loader (a warning would be printed
    # to stderr outside pytest), no traceback, no advice to load it unsafely.
    marker = tmp_path / 'marker'
    evil = _craft(tmp_path / 'evil.pt', marker, 'pickle')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert main(['evaluate', str(evil)]) == 1
    assert [str(w.message) for w in caught] == []
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith(f'mambarec evaluate: error: {evil}: refused')
    assert 'weights_only' not in line
    assert not marker.exists() and captured.out == ''


def test_load_checkpoint_refuses_without_running_it(tmp_path):
    marker = tmp_path / 'marker'
    evil = _craft(tmp_path / 'evil.pt', marker, 'pickle')
    with pytest.raises(CheckpointError, match='refused'):
        load_checkpoint(evil)
    assert not marker.exists()


def test_a_checkpoint_holds_only_plain_data(run_dir):
    # format 2 is what weights_only=True reads: tensors and plain containers
    for name in ('last.pt', 'best.pt'):
        state = torch.load(run_dir / name, weights_only=True)
        assert state['format'] == FORMAT


# ---------------------------------------------------------------------------------
# Format 1: readable only when trusted
# ---------------------------------------------------------------------------------
def _format_1(state: dict) -> dict:
    """``state`` (format 2) as the previous version wrote it: NumPy and tuple RNG
    states, the fusion layers at the top level, no model name in the config."""
    old = dict(state, format='mambarec_pyg.checkpoint/1')
    old.pop('model_name')
    old['kind'] = 'last'
    old['model'] = {k[len('fusion.'):] if k.startswith(('fusion.query.',
                                                        'fusion.preference_gates.'))
                    else k: v for k, v in state['model'].items()}
    config = json.loads(json.dumps(state['config']))
    config['model'].pop('name')
    config['train']['cl_warmup_epochs'] = config['model'].pop('cl_warmup_epochs')
    old['config'] = config
    rng = dict(state['rng'])
    rng['python'] = random.getstate()
    rng['numpy'] = np.random.get_state()  # holds a NumPy array
    old['rng'] = rng
    return old


@pytest.fixture(scope='module')
def old_checkpoint(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp('old') / 'old.pt'
    torch.save(_format_1(torch.load(run_dir / 'last.pt', weights_only=True)), path)
    return path


def test_format_1_needs_trust(old_checkpoint):
    with pytest.raises(CheckpointError, match='--trust-checkpoint'):
        load_checkpoint(old_checkpoint)
    state = load_checkpoint(old_checkpoint, trusted=True)
    assert state['model_name'] == 'mambarec'
    assert state['config']['model']['name'] == 'mambarec'
    assert 'fusion.query.0.weight' in state['model']
    # the RNG states come back as the current format has them, and restore
    assert isinstance(state['rng']['numpy']['keys'], torch.Tensor)
    set_rng_state(state['rng'])
    expected = np.random.get_state()[1]
    np.testing.assert_array_equal(state['rng']['numpy']['keys'].numpy(), expected)


def test_format_1_through_the_cli(old_checkpoint, run_dir, capsys):
    capsys.readouterr()
    assert main(['evaluate', str(old_checkpoint), '--format', 'json', '--device',
                 'cpu', '--quiet']) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(old_checkpoint) in line and '--trust-checkpoint' in line
    assert main(['evaluate', str(old_checkpoint), '--format', 'json', '--device',
                 'cpu', '--quiet', '--trust-checkpoint']) == 0
    got = json.loads(capsys.readouterr().out)['test']
    want = json.loads((run_dir / 'results.json').read_text())['test']
    assert got['recall@20'] == pytest.approx(want['recall@20'], abs=1e-6)
    assert main(['recommend', str(old_checkpoint), '--users', '0,1', '--k', '3',
                 '--device', 'cpu']) == 1
    assert '--trust-checkpoint' in _one_line(capsys.readouterr().err)
    assert main(['recommend', str(old_checkpoint), '--users', '0,1', '--k', '3',
                 '--device', 'cpu', '--trust-checkpoint']) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 2 * 3


def test_resume_from_format_1_is_refused_clearly(old_checkpoint, run_dir, tmp_path,
                                                 capsys):
    # `mambarec train` cannot read an old last.pt; the message must not send the
    # user to a flag the command does not have, and nothing changes on disk.
    out = tmp_path / 'run'
    shutil.copytree(run_dir, out)
    shutil.copy(old_checkpoint, out / 'last.pt')
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != '.lock'}
    assert main(['train', '--synthetic', 'tiny', '--output', str(out), '--resume',
                 *FAST]) == 1
    line = _one_line(capsys.readouterr().err)
    assert str(out / 'last.pt') in line and 'older' in line
    assert 'cannot be resumed' in line and 'of mambarec evaluate or recommend' in line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != '.lock'}
    assert after == before
