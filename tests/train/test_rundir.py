"""The run-directory contract (train/rundir.py) as unit tests: what a finished run is,
what may change on resume or when a finished run is continued, and the config diff
that names each field. The trainer, the experiment runner and the grid search all
call these functions; their end-to-end behaviour is tested with them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mambarec_pyg.config import Config, ConfigError, DataConfig, TrainConfig
from mambarec_pyg.train import rundir
from mambarec_pyg.train.rundir import (CONTINUABLE, FINAL_STATUSES, IGNORED,
                                       RESUMABLE_CHANGES, ConfigDiff, check_resume,
                                       config_diffs, finished_record, finished_run,
                                       read_record)


def _config(**train) -> Config:
    train = {'device': 'cpu', 'max_epochs': 3, **train}
    return Config(data=DataConfig(synthetic='tiny'), train=TrainConfig(**train))


def _record(directory: Path, status: str, config: Config, epochs: int = 3,
            best: bool = True) -> dict:
    """A run directory as the trainer leaves it: results.json (and best.pt)."""
    directory.mkdir(parents=True, exist_ok=True)
    record = {'status': status, 'epochs': epochs, 'config': config.to_dict(),
              'valid': {'recall@20': 0.5}, 'test': {'recall@20': 0.4},
              'best_epoch': epochs - 1, 'timings': {'total_s': 1.0}}
    (directory / 'results.json').write_text(json.dumps(record))
    if best:
        (directory / 'best.pt').write_bytes(b'weights')
    return record


# -- the one rule, one place -----------------------------------------------------------
def test_the_option_groups_are_one_rule():
    assert RESUMABLE_CHANGES == CONTINUABLE + IGNORED
    assert not set(CONTINUABLE) & set(IGNORED)
    from mambarec_pyg import config
    assert config.RESUMABLE_CHANGES is RESUMABLE_CHANGES  # the old import location
    from mambarec_pyg.experiments import runner
    assert runner.FINAL is FINAL_STATUSES


# -- config_diffs ----------------------------------------------------------------------
def test_config_diffs_name_each_field_with_both_values():
    old = _config(batch_size=128).to_dict()
    new = _config(batch_size=64, lr=0.01).to_dict()
    diffs = config_diffs(old, new)
    assert diffs == [ConfigDiff('train.batch_size', 128, 64),
                     ConfigDiff('train.lr', 0.001, 0.01)]
    assert diffs[0].describe() == 'train.batch_size: 128 in the checkpoint, 64 now'
    assert diffs[0].describe('there') == 'train.batch_size: 128 there, 64 now'
    field, was, now = diffs[1]  # a named tuple
    assert (field, was, now) == ('train.lr', 0.001, 0.01)


def test_config_diffs_sections_and_what_is_never_compared():
    old = _config().to_dict()
    new = json.loads(json.dumps(old))
    new['data']['root'] = '/elsewhere'  # where the files are: not compared
    new['train']['num_threads'] = 4  # IGNORED
    new['train']['topk'] = tuple(new['train']['topk'])  # a tuple equals its list
    assert config_diffs(old, new) == []
    new['model']['mmd_weight'] = 0.2
    new['data']['synthetic_seed'] = 5
    assert [d.field for d in config_diffs(old, new)] == ['data.synthetic_seed',
                                                         'model.mmd_weight']
    # with other options ignored
    new['train']['max_epochs'] = 9
    assert 'train.max_epochs' in [d.field for d in config_diffs(old, new)]
    assert 'train.max_epochs' not in [
        d.field for d in config_diffs(old, new, ignore=RESUMABLE_CHANGES)]


def test_config_diffs_protocol_left_none_takes_the_recorded_value():
    old = _config().to_dict()
    old['train']['lr_decay'] = 0.96  # what the run used (MambaRec's protocol)
    assert _config().train.lr_decay is None
    assert config_diffs(old, _config().to_dict()) == []
    assert config_diffs(old, _config(lr_decay=0.5).to_dict()) == [
        ConfigDiff('train.lr_decay', 0.96, 0.5)]


def test_config_diffs_field_present_on_one_side_only():
    old = {'train': {'lr': 0.1}}
    new = {'train': {'lr': 0.1, 'new_option': 3}}
    assert config_diffs(old, new) == [ConfigDiff('train.new_option', None, 3)]


# -- records and finished runs ---------------------------------------------------------
def test_read_record(tmp_path):
    assert read_record(tmp_path) is None  # missing
    (tmp_path / 'results.json').write_text('{"status": "runn')  # cut short
    assert read_record(tmp_path) is None
    (tmp_path / 'results.json').write_text('[1, 2]')  # not an object
    assert read_record(tmp_path) is None
    (tmp_path / 'results.json').write_text('{"status": "running"}')
    assert read_record(tmp_path) == {'status': 'running'}


@pytest.mark.parametrize('status', ['running', 'interrupted', 'diverged'])
def test_unfinished_statuses(tmp_path, status):
    _record(tmp_path, status, _config())
    assert finished_record(tmp_path) is None
    assert finished_run(tmp_path, _config()) == (None, False)


@pytest.mark.parametrize('status', FINAL_STATUSES)
def test_a_finished_run_needs_a_final_status_and_best_pt(tmp_path, status):
    record = _record(tmp_path, status, _config())
    assert finished_record(tmp_path) == record
    (tmp_path / 'best.pt').unlink()
    assert finished_record(tmp_path) is None


def test_finished_run_same_settings_is_reused(tmp_path):
    record = _record(tmp_path, 'max_epochs', _config())
    # IGNORED options and data.root may differ
    again = _config(num_threads=1, eval_batch_size=7, checkpoint_interval_s=0)
    assert finished_run(tmp_path, again) == (record, False)
    assert finished_run(tmp_path, again.to_dict()) == (record, False)  # a dict too


def test_finished_run_continues_under_continuable_changes(tmp_path):
    record = _record(tmp_path, 'max_epochs', _config(), epochs=3)
    assert finished_run(tmp_path, _config(max_epochs=5)) == (record, True)
    assert finished_run(tmp_path, _config(patience=3)) == (record, True)
    assert finished_run(tmp_path, _config(patience_warmup=1)) == (record, True)


def test_finished_run_is_never_cut_back(tmp_path):
    _record(tmp_path, 'max_epochs', _config(max_epochs=3), epochs=3)
    with pytest.raises(ConfigError, match=r'holds a finished run with other settings '
                       r"\(train.max_epochs: 3 there, 2 now\); use another --output"):
        finished_run(tmp_path, _config(max_epochs=2))


def test_finished_run_with_other_settings_names_them(tmp_path):
    _record(tmp_path, 'max_epochs', _config())
    with pytest.raises(ConfigError) as info:
        finished_run(tmp_path, _config(batch_size=64, lr=0.01, max_epochs=9))
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert 'train.batch_size: 2048 there, 64 now' in msg
    assert 'train.lr: 0.001 there, 0.01 now' in msg
    assert 'max_epochs' not in msg  # continuable: not a reason to stop


def test_an_early_stopped_or_evaluated_run_is_not_trained_again(tmp_path):
    record = _record(tmp_path / 'a', 'early_stopped', _config(), epochs=2)
    # it stopped before its limit: more epochs change nothing
    assert finished_run(tmp_path / 'a', _config(max_epochs=10)) == (record, False)
    # more patience may let it train on
    assert finished_run(tmp_path / 'a', _config(patience=50)) == (record, True)
    record = _record(tmp_path / 'b', 'evaluated', _config(), epochs=1)
    assert finished_run(tmp_path / 'b', _config(max_epochs=10)) == (record, False)


# -- resuming --------------------------------------------------------------------------
def _saved(run: Config, **kw) -> dict:
    state = {'config': run.to_dict(), 'train_config': run.to_dict()['train'],
             'model_name': 'mambarec',
             'dataset': {'num_users': 100, 'num_items': 60,
                         'num_train_interactions': 800}}
    state.update(kw)
    return state


_SHAPE = {'name': 'tiny', 'num_users': 100, 'num_items': 60,
          'num_train_interactions': 800}


def _resume(saved, config: Config, whole=True, dataset=_SHAPE, name='mambarec'):
    check_resume('DIR/last.pt', saved, config=config.to_dict() if whole else None,
                 train=config.to_dict()['train'], dataset=dataset, model_name=name)


def test_resume_allows_exactly_the_resumable_changes():
    base = _config()
    _resume(_saved(base), base)
    changed = _config(max_epochs=9, patience=1, patience_warmup=2, num_threads=1,
                      eval_batch_size=8, deterministic=False, checkpoint_interval_s=0)
    # the changed config really differs, and only in resumable fields
    differs = {d.field for d in config_diffs(base.to_dict(), changed.to_dict(),
                                             ignore=())}
    assert differs == {'train.max_epochs', 'train.patience', 'train.patience_warmup',
                       'train.num_threads', 'train.eval_batch_size',
                       'train.deterministic', 'train.checkpoint_interval_s'}
    assert differs <= set(RESUMABLE_CHANGES)
    _resume(_saved(base), changed)
    _resume(_saved(base), changed, whole=False)


def test_resume_names_every_other_difference():
    base = _config()
    with pytest.raises(ConfigError) as info:
        _resume(_saved(base), _config(batch_size=64, seed=1),
                dataset=dict(_SHAPE, num_items=61), name='lightgcn')
    msg = str(info.value)
    assert msg.startswith('DIR/last.pt: cannot resume with different settings (')
    for part in ('train.batch_size: 2048 in the checkpoint, 64 now',
                 'train.seed: 999 in the checkpoint, 1 now',
                 'dataset num_items: 60 in the checkpoint, 61 now',
                 "model.name: 'mambarec' in the checkpoint, 'lightgcn' now",
                 'only ' + ', '.join(RESUMABLE_CHANGES) + ' may change',
                 'nothing was changed on disk'):
        assert part in msg, part


def test_resume_without_a_whole_config_compares_the_recorded_train_fields():
    base = _config()
    saved = _saved(base, config=None)
    saved['train_config'] = {'batch_size': 2048, 'lr': 0.001}  # an older record
    _resume(saved, _config(seed=5), whole=False)  # seed not recorded: not compared
    with pytest.raises(ConfigError, match='train.lr: 0.001 in the checkpoint, 0.1 now'):
        _resume(saved, _config(lr=0.1), whole=False)


def test_rundir_needs_no_torch(tmp_path):
    # A process holding a lock loads this file alone; it must not need torch.
    import subprocess
    import sys
    code = ('import importlib.util, sys\n'
            'spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])\n'
            'm = importlib.util.module_from_spec(spec)\n'
            'spec.loader.exec_module(m)\n'
            'm.RunLock(sys.argv[2]).acquire()\n'
            'print("torch" in sys.modules, m.config_diffs({"train": {"a": 1}}, '
            '{"train": {"a": 2}})[0].describe())\n')
    out = subprocess.run([sys.executable, '-c', code, rundir.__file__, str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == 'False train.a: 1 in the checkpoint, 2 now'
