"""The command line under bad input, signals, full disks and concurrent runs.

Each test drives ``mambarec_pyg.cli.main`` as a user would (a second process only
where a second process is the point) and checks the exit status, that the message
is one line naming what happened, and that nothing on disk was changed or left
half-written.
"""
from __future__ import annotations

import errno
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from support import one_line as _one_line, snapshot as _snapshot

from mambarec_pyg.cli import main
from mambarec_pyg.data import write_mmrec
from mambarec_pyg.train.rundir import RunLock

UI = ('user', 'interacts', 'item')
FAST = ['--train.batch-size', '256', '--device', 'cpu', '--quiet']


def _train(out: Path, *extra: str, epochs: int = 1) -> int:
    return main(['train', '--synthetic', 'tiny', '--output', str(out),
                 '--train.max-epochs', str(epochs), *FAST, *extra])


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
    """A finished one-epoch run; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp('hardening') / 'run'
    assert _train(out) == 0
    return out


@pytest.fixture()
def run_copy(base_run, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(base_run, out)
    return out


# ---------------------------------------------------------------------------------
# --resume: only the resumable options may change
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('flags, field, old, new', [
    (['--model.mmd-weight', '0.9'], 'model.mmd_weight', '0.15', '0.9'),
    (['--synthetic-seed', '1'], 'data.synthetic_seed', '0', '1'),
    (['--model.embedding-size', '32'], 'model.embedding_size', '64', '32'),
])
def test_resume_with_changed_settings_stops_and_changes_nothing(run_copy, capsys,
                                                                flags, field, old,
                                                                new):
    before = _snapshot(run_copy)
    capsys.readouterr()
    assert _train(run_copy, '--resume', *flags, epochs=2) == 2
    err = capsys.readouterr().err
    assert f'{field}: {old} in the checkpoint, {new} now' in err
    assert 'Traceback' not in err and 'nothing was changed on disk' in err
    assert _snapshot(run_copy) == before


def test_resume_with_a_resumable_change_continues(run_copy, capsys):
    assert _train(run_copy, '--resume', '--train.patience', '5', epochs=2) == 0
    results = json.loads((run_copy / 'results.json').read_text())
    assert results['epochs'] == 2 and results['config']['train']['max_epochs'] == 2
    assert results['config']['train']['patience'] == 5


# ---------------------------------------------------------------------------------
# A run directory belongs to one process
# ---------------------------------------------------------------------------------
# Another process holding the lock (rundir.py loaded alone: no torch to import).
_HOLD = ('import importlib.util, sys, time\n'
         'spec = importlib.util.spec_from_file_location("rundir", sys.argv[2])\n'
         'rundir = importlib.util.module_from_spec(spec)\n'
         'spec.loader.exec_module(rundir)\n'
         'lock = rundir.RunLock(sys.argv[1]).acquire()\n'
         'print("held", flush=True)\n'
         'time.sleep(120)\n')


def test_a_second_run_in_the_same_directory_stops(tmp_path, capsys):
    out = tmp_path / 'run'
    import mambarec_pyg.train.rundir as rundir
    holder = subprocess.Popen([sys.executable, '-c', _HOLD, str(out), rundir.__file__],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        assert _train(out) == 1
        line = _one_line(capsys.readouterr().err)
        assert f'pid {holder.pid}' in line and 'in use by another run' in line
        assert str(out) in line
        assert _snapshot(out) == {}  # the second run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the owner died: its lock file is left behind, and does not block
    assert f'pid {holder.pid}' in (out / RunLock.NAME).read_text()
    assert _train(out) == 0
    assert (out / 'results.json').is_file()


def test_a_lock_held_in_this_process_blocks_too(tmp_path, capsys):
    out = tmp_path / 'run'
    with RunLock(out):
        assert _train(out) == 1
        assert 'in use by another run' in _one_line(capsys.readouterr().err)
    assert _train(out) == 0


def test_a_stale_lock_file_does_not_block(tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / RunLock.NAME).write_text('pid 999999 on elsewhere\n')
    assert _train(out) == 0


# ---------------------------------------------------------------------------------
# Ctrl-C during start-up, a full disk
# ---------------------------------------------------------------------------------
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_while_the_parser_is_built(monkeypatch, capsys):
    import mambarec_pyg.cli as cli
    monkeypatch.setattr(cli, 'build_parser', _interrupt)
    assert main(['train', '--synthetic', 'tiny']) == 130
    assert _one_line(capsys.readouterr().err) == 'mambarec train: interrupted'


def test_ctrl_c_while_a_command_imports(monkeypatch, capsys, tmp_path):
    # `from .train.experiment import run` inside cmd_train, interrupted
    module = types.ModuleType('mambarec_pyg.train.experiment')
    module.__getattr__ = _interrupt
    monkeypatch.setitem(sys.modules, 'mambarec_pyg.train.experiment', module)
    assert _train(tmp_path / 'run') == 130
    assert _one_line(capsys.readouterr().err) == 'mambarec train: interrupted'
    assert not (tmp_path / 'run').exists()


def test_ctrl_c_while_the_data_load(monkeypatch, capsys, tmp_path):
    import mambarec_pyg.train.experiment as experiment
    monkeypatch.setattr(experiment, 'load_dataset', _interrupt)
    assert _train(tmp_path / 'run') == 130
    assert _one_line(capsys.readouterr().err) == 'mambarec train: interrupted'
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('failure', [
    OSError(errno.ENOSPC, 'No space left on device'),
    RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs '
                 '0; basic_ios::clear: iostream error'),
])
def test_a_full_disk_ends_in_one_line_and_keeps_the_checkpoint(run_copy, capsys,
                                                               monkeypatch, failure):
    before = _snapshot(run_copy)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save({'partial': torch.zeros(4)}, f)  # some bytes reached the disk
        raise failure

    monkeypatch.setattr(torch, 'save', full_disk)
    capsys.readouterr()
    assert _train(run_copy, '--resume', epochs=2) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('mambarec train: error:')
    assert 'could not write the checkpoint' in line and 'disk full' in line
    assert str(run_copy / 'last.pt') in line
    after = _snapshot(run_copy)  # previous checkpoints intact, no temporary file
    assert after.pop('train.log').startswith(before.pop('train.log'))
    assert after == before
    monkeypatch.setattr(torch, 'save', real_save)
    assert _train(run_copy, '--resume', epochs=2) == 0  # and it resumes from them


# ---------------------------------------------------------------------------------
# recommend: never an excluded item, always valid JSON
# ---------------------------------------------------------------------------------
def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f'not JSON: {name}')
    return json.loads(text, parse_constant=refuse)


def test_recommend_more_than_the_candidates(base_run, tiny_data, capsys):
    users = [0, 1, 2, 3, 4]
    train = tiny_data[UI].edge_index
    num_items = int(tiny_data['item'].num_nodes)
    k = num_items + 10
    capsys.readouterr()
    assert main(['recommend', str(base_run), '--users', ','.join(map(str, users)),
                 '--k', str(k), '--format', 'json', '--device', 'cpu']) == 0
    captured = capsys.readouterr()
    recs = _strict_json(captured.out)
    assert 'fewer than' in captured.err
    for rec in recs:
        seen = set(train[1, train[0] == rec['user']].tolist())
        candidates = set(range(num_items)) - seen
        assert set(rec['items']) == candidates  # all of them, none seen
        assert len(rec['items']) == len(rec['scores']) < k
        assert all(math.isfinite(s) for s in rec['scores'])
        assert rec['scores'] == sorted(rec['scores'], reverse=True)
    assert main(['recommend', str(base_run), '--users', '0', '--k', str(k),
                 '--device', 'cpu']) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    seen = set(train[1, train[0] == 0].tolist())
    items = [int(r.split(',')[2]) for r in rows]
    assert len(items) == num_items - len(seen) and not set(items) & seen
    assert all(math.isfinite(float(r.split(',')[3])) for r in rows)


# ---------------------------------------------------------------------------------
# Data without a valid or a test split
# ---------------------------------------------------------------------------------
def _without_split(tiny_data, root: Path, name: str, label: str) -> None:
    """The tiny data as MMRec files with split ``label`` relabelled as training."""
    write_mmrec(tiny_data, root, name)
    path = root / name / f'{name}.inter'
    lines = path.read_text().splitlines()
    lines = [lines[0]] + [line[:-1] + '0' if line.endswith('\t' + label) else line
                          for line in lines[1:]]
    path.write_text('\n'.join(lines) + '\n')


@pytest.fixture(scope='module')
def split_data(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp('splits')
    _without_split(tiny_data, root, 'novalid', '1')
    _without_split(tiny_data, root, 'notest', '2')
    return root


def test_no_valid_split_stops_unless_asked(split_data, tmp_path, capsys):
    out = tmp_path / 'run'
    argv = ['train', '--data', str(split_data), '--dataset', 'novalid', '--output',
            str(out), '--train.max-epochs', '2', *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'novalid has no validation interactions (x_label 1)' in err
    assert '--data.allow-no-valid true' in err and 'Traceback' not in err
    assert not out.exists()

    assert main(argv + ['--data.allow-no-valid', 'true']) == 0
    captured = capsys.readouterr()
    assert 'no valid split in the data; epoch 1 (the last) is reported' in captured.out
    assert 'nan' not in captured.out and 'R@20' in captured.out
    results = json.loads((out / 'results.json').read_text())
    assert results['best_epoch'] == 1 and results['valid'] == {}
    assert results['test']['recall@20'] > 0
    assert any('no validation interactions' in w for w in results['warnings'])
    assert 'no validation interactions' in captured.err


def test_no_test_split_trains_and_says_so(split_data, tmp_path, capsys):
    out = tmp_path / 'run'
    assert main(['train', '--data', str(split_data), '--dataset', 'notest',
                 '--output', str(out), '--train.max-epochs', '2', *FAST]) == 0
    captured = capsys.readouterr()
    assert 'test: no test split in the data; no test metrics' in captured.out
    assert 'R@20' in captured.out  # the valid row
    results = json.loads((out / 'results.json').read_text())
    assert results['test'] == {} and results['valid']['recall@20'] > 0
    assert any('no test interactions' in w for w in results['warnings'])
    assert 'no test interactions' in (out / 'train.log').read_text()


# ---------------------------------------------------------------------------------
# YAML files that are not what they should be
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('content, message', [
    (b'', 'the file is empty'),
    (b'# only a comment\n', 'the file is empty'),
    (b'train:\n  max_epochs: 1\n', 'no data chosen (the file has no data.dataset or '
                                   'data.synthetic)'),
    (b'model:\n  mmd_weight: 0.2\n', 'no data chosen'),
    (b'\x95\x00\xffbinary\x80', 'not a YAML text file'),
    (b'- a\n- b\n', 'expected a mapping'),
])
def test_bad_config_files_name_the_file(tmp_path, capsys, content, message):
    config = tmp_path / 'run.yaml'
    config.write_bytes(content)
    out = tmp_path / 'run'
    assert main(['train', '--config', str(config), '--output', str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert f'{config}: ' in err and message in err and 'Traceback' not in err
    assert not out.exists()


def test_a_config_without_data_plus_synthetic_on_the_command_line(tmp_path, capsys):
    config = tmp_path / 'run.yaml'
    config.write_text('train:\n  max_epochs: 1\n')
    out = tmp_path / 'run'
    assert main(['train', '--config', str(config), '--synthetic', 'tiny', '--output',
                 str(out), *FAST]) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['config']['data']['synthetic'] == 'tiny'
    assert results['epochs'] == 1


# ---------------------------------------------------------------------------------
# Runs that did not learn
# ---------------------------------------------------------------------------------
def test_mambarec_diagnose_on_a_history(tiny_data):
    from mambarec_pyg.models.mambarec import MambaRec, MambaRecConfig
    ln2 = math.log(2)
    flat = [{'epoch': e, 'loss': {'bpr': ln2 + d}} for e, d in
            enumerate([0.001, -0.002, 0.0005, -0.001])]
    model = MambaRec(tiny_data, MambaRecConfig())
    [warning] = model.diagnose(flat)
    assert 'stayed at ln 2' in warning and 'all 4 epochs' in warning
    assert '--model.cl-warmup-epochs' in warning
    assert model.diagnose(flat[:2]) == []  # too short to say
    learning = flat[:2] + [{'epoch': 2, 'loss': {'bpr': 0.6}}]
    assert model.diagnose(learning) == []
    # BPR close to ln 2 but the validation metric still improving: learning slowly
    improving = [dict(r, best=r['epoch'] in (0, 3)) for r in flat]
    assert model.diagnose(improving) == []
    # without InfoNCE the warm-up would not help: the hint says what might
    no_cl = MambaRec(tiny_data, MambaRecConfig(cl_weight=0.0))
    [warning] = no_cl.diagnose(flat)
    assert '--model.cl-warmup-epochs' not in warning and 'learning rate' in warning


def test_a_run_whose_bpr_never_moved_says_so(tmp_path, capsys):
    # 8-d embeddings start with scores near 0 on the tiny data (BPR within 0.005 of
    # ln 2); at lr 1e-9 nothing is learned.
    out = tmp_path / 'run'
    assert _train(out, '--model.embedding-size', '8', '--train.lr', '1e-9',
                  epochs=3) == 0
    results = json.loads((out / 'results.json').read_text())
    bpr = [r['loss']['bpr'] for r in results['history']]
    assert all(abs(b - math.log(2)) < 0.005 for b in bpr)
    [warning] = results['warnings']
    assert 'stayed at ln 2' in warning and '--model.cl-warmup-epochs' in warning
    assert f'warning: {warning}' in (out / 'train.log').read_text()
    assert f'warning: {warning}' in capsys.readouterr().err


def test_a_run_that_learns_has_no_warning(tmp_path):
    out = tmp_path / 'run'
    assert _train(out, '--model.embedding-size', '8', '--train.lr', '0.01',
                  epochs=3) == 0
    results = json.loads((out / 'results.json').read_text())
    assert results['warnings'] == []
    assert 'warning' not in (out / 'train.log').read_text()


# ---------------------------------------------------------------------------------
# Interrupted before an epoch completed: the earlier record stays as it was
# ---------------------------------------------------------------------------------
def test_overwrite_interrupted_in_the_first_epoch_keeps_the_old_record(
        run_copy, capsys, monkeypatch):
    from mambarec_pyg.models.mambarec import MambaRec
    before = _snapshot(run_copy)
    monkeypatch.setattr(MambaRec, 'loss', _interrupt)
    capsys.readouterr()
    # a different model: an earlier best.pt must not be loaded into it either
    assert _train(run_copy, '--overwrite', '--model.embedding-size', '32',
                  epochs=2) == 130
    line = _one_line(capsys.readouterr().err)
    assert 'interrupted before the first epoch completed' in line
    after = _snapshot(run_copy)
    assert {k: v for k, v in after.items() if k != 'train.log'} == \
        {k: v for k, v in before.items() if k != 'train.log'}
