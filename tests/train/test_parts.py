"""The trainer's parts on their own: the run state and the recorder (their
``state_dict`` round trips), the checkpoint's key set (the format older checkpoints
share), and the seams a data-parallel trainer uses -- the step factory, a recorder
that does not write, and the one early-stopping decision."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from support import MF, MFConfig

from mambarec_pyg.config import Config, DataConfig, TrainConfig
from mambarec_pyg.train.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from mambarec_pyg.train.recorder import RunRecorder
from mambarec_pyg.train.state import RunState
from mambarec_pyg.train.step import TrainingStep
from mambarec_pyg.train.trainer import Trainer

#: the keys of ``last.pt`` since format 2 (older checkpoints have the same).
LAST_KEYS = {'format', 'kind', 'model_name', 'epoch', 'best_epoch', 'best_value',
             'best_valid', 'best_test', 'train_config', 'config', 'data', 'dataset',
             'model', 'optimizer', 'scheduler', 'rng', 'bad_epochs', 'history',
             'timings', 'warnings'}
BEST_KEYS = {'format', 'kind', 'model_name', 'epoch', 'best_epoch', 'best_value',
             'best_valid', 'best_test', 'train_config', 'config', 'data', 'dataset',
             'model'}


def _cfg(**kw):
    base = dict(seed=3, device='cpu', batch_size=128, max_epochs=3, lr=1e-2,
                checkpoint_interval_s=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _draws(state: RunState):
    """One draw from every generator a run consumes."""
    return (random.random(), float(np.random.rand()), float(torch.rand(())),
            int(torch.randint(1000, (), generator=state.generator)))


def _filled_state(epoch=5, best_epoch=2) -> RunState:
    state = RunState()
    state.seed(7)
    _draws(state)  # move the generators away from their seeds
    state.epoch, state.bad_epochs = epoch, 2
    state.best_epoch, state.best_value = best_epoch, 0.25
    state.best_valid, state.best_test = {'recall@20': 0.25}, {'recall@20': 0.2}
    state.best_weights = {'w': torch.arange(4.0)}
    state.history = [{'epoch': e, 'loss': {'total': 1.0 / (e + 1)}, 'train_s': 0.5,
                      'eval_s': 0.25} for e in range(epoch)]
    state.timings.update(train_s=2.5, eval_s=1.25)
    state.warnings = ['a warning']
    return state


# -- RunState ---------------------------------------------------------------------------
def test_run_state_round_trip_restores_counters_and_every_random_state(tmp_path):
    state = _filled_state()
    saved = state.state_dict()
    expected = _draws(state)  # what the run draws next
    # through a real checkpoint file (weights-only loading)
    path = save_checkpoint(tmp_path / 'state.pt', saved)
    loaded = load_checkpoint(path)
    seed_everything(12345)  # another global state must not matter
    other = RunState()
    other.load_state_dict(loaded)
    assert _draws(other) == expected
    for name in ('epoch', 'best_epoch', 'best_value', 'best_valid', 'best_test',
                 'bad_epochs', 'history', 'warnings'):
        assert getattr(other, name) == getattr(state, name), name
    assert other.timings == state.timings
    assert torch.equal(other.best_weights['w'], state.best_weights['w'])
    assert other.state_dict().keys() == saved.keys()


def test_run_state_keeps_best_weights_only_when_not_the_last_epoch():
    state = _filled_state(epoch=5, best_epoch=2)
    assert 'best_model' in state.state_dict()
    state = _filled_state(epoch=5, best_epoch=4)  # the last epoch is the best
    saved = state.state_dict()
    assert 'best_model' not in saved
    # a last.pt's `model` then serves as the best weights
    other = RunState()
    other.load_state_dict(dict(saved, model={'w': torch.ones(4)}))
    assert torch.equal(other.best_weights['w'], torch.ones(4))
    other.load_state_dict(saved)  # no weights anywhere: none
    assert other.best_weights is None


def test_run_state_summaries():
    state = _filled_state(epoch=4)
    t = state.timing_summary()
    assert t['mean_epoch_train_s'] == pytest.approx(0.5)
    assert t['mean_epoch_eval_s'] == pytest.approx(0.25)
    assert 'mean_epoch_train_s' not in RunState().timing_summary()
    state.add_warnings(['b', 'a warning', 'b'])
    assert state.warnings == ['a warning', 'b']
    model = torch.nn.Linear(2, 1)
    state.set_best(3, 0.5, {'recall@20': 0.5}, {}, model)
    assert state.best_summary() == {'best_epoch': 3, 'best_value': 0.5,
                                    'best_valid': {'recall@20': 0.5}, 'best_test': {}}
    with torch.no_grad():
        model.weight.add_(1.0)  # the best weights are a copy
    assert not torch.equal(state.best_weights['weight'], model.weight)


# -- RunRecorder ------------------------------------------------------------------------
def _recorder(tmp_path, **kw) -> RunRecorder:
    run_config = Config(data=DataConfig(synthetic='tiny'), train=_cfg())
    return RunRecorder(tmp_path / 'run', config=run_config.train, run_config=run_config,
                       model_name='test_mf', data_spec={'synthetic': 'tiny'},
                       dataset={'num_users': 100}, device=torch.device('cpu'), **kw)


def test_recorder_state_round_trip(tmp_path):
    recorder = _recorder(tmp_path)
    assert recorder.state_dict() == {'last_epoch': 0, 'best_epoch': -1}
    recorder.load_state_dict({'last_epoch': 4, 'best_epoch': 2})
    other = _recorder(tmp_path)
    other.load_state_dict(recorder.state_dict())
    assert other.state_dict() == {'last_epoch': 4, 'best_epoch': 2}


def test_recorder_writes_each_file_once_per_change(tmp_path):
    recorder = _recorder(tmp_path)
    out = recorder.output_dir
    state = _filled_state(epoch=3, best_epoch=1)
    with recorder.lock():
        recorder.open()
        recorder.log('hello')
        assert not (out / 'config.yaml').exists()  # only with the first file
        calls = []
        recorder.write_last(state, lambda: calls.append(1) or {'epoch': 3})
        recorder.write_last(state, lambda: calls.append(1) or {'epoch': 3})
        assert calls == [1]  # last.pt already holds epoch 3
        assert (out / 'config.yaml').is_file()
        recorder.write_best(state)
        best = load_checkpoint(out / 'best.pt')
        assert set(best) == BEST_KEYS and best['epoch'] == 2 and best['kind'] == 'best'
        stamp = (out / 'best.pt').stat().st_mtime_ns
        recorder.write_best(state)  # the same best epoch: not written again
        assert (out / 'best.pt').stat().st_mtime_ns == stamp
        recorder.write_results('running', state)
        recorder.close()
    record = json.loads((out / 'results.json').read_text())
    assert record['status'] == 'running' and record['epochs'] == 3
    assert record['model'] == 'test_mf' and record['best_epoch'] == 1
    assert record['checkpoints'] == {'best': str(out / 'best.pt'),
                                     'last': str(out / 'last.pt')}
    assert recorder.state_dict() == {'last_epoch': 3, 'best_epoch': 1}
    assert (out / 'train.log').read_text().endswith(' hello\n')
    assert state.timings['checkpoint_s'] > 0


def test_recorder_that_does_not_write(tmp_path, capsys):
    recorder = _recorder(tmp_path, is_writer=False)
    state = _filled_state()
    with recorder.lock():
        recorder.open()
        recorder.log('not shown')
        recorder.write_last(state, lambda: {'epoch': 5})
        recorder.write_best(state)
        recorder.write_results('running', state)
    assert not recorder.output_dir.exists()
    captured = capsys.readouterr()
    assert captured.out == captured.err == ''
    # what it would write is still there to ask for
    assert recorder.results('running', state)['epochs'] == 5


# -- Trainer: the checkpoint format and the seams ------------------------------------
def _trainer(data, out=None, cfg=None, **kw) -> Trainer:
    seed_everything(3)
    run_config = Config(data=DataConfig(synthetic='tiny'), model=MFConfig(),
                        train=cfg or _cfg())
    kw.setdefault('quiet', True)
    return Trainer(MF(data, run_config.model), data, run_config, out, **kw)


def test_trainer_state_round_trip_and_checkpoint_keys(tiny_data, tmp_path):
    trainer = _trainer(tiny_data, tmp_path / 'a', _cfg(max_epochs=2))
    trainer.fit()
    state = load_checkpoint(tmp_path / 'a' / 'last.pt')
    assert set(state) == LAST_KEYS  # the best epoch is the last: no best_model
    assert set(load_checkpoint(tmp_path / 'a' / 'best.pt')) == BEST_KEYS
    other = _trainer(tiny_data, cfg=_cfg(max_epochs=2))
    other._setup()
    other.load_state_dict(state)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(other.model.state_dict()[key], value), key
    assert other.state.history == trainer.state.history
    assert other.optimizer.state_dict()['state'].keys() == \
        trainer.optimizer.state_dict()['state'].keys()
    assert other.scheduler.state_dict() == trainer.scheduler.state_dict()


class _CountingStep(TrainingStep):
    def __init__(self, model, optimizer):
        super().__init__(model, optimizer)
        self.updates = 0

    def update(self, parts):
        self.updates += 1
        super().update(parts)


def test_the_step_factory_builds_the_step_after_the_optimiser(tiny_data):
    seen = []

    def factory(model, optimizer):
        seen.append((model, optimizer))
        return _CountingStep(model, optimizer)

    trainer = _trainer(tiny_data, step_factory=factory)
    result = trainer.fit()
    assert seen == [(trainer.model, trainer.optimizer)]
    assert isinstance(trainer.step, _CountingStep)
    assert trainer.step.updates == result.epochs * trainer.pairs.num_batches(128)
    # the same run as with the default step
    plain = _trainer(tiny_data).fit()
    assert [h['valid'] for h in result.history] == [h['valid'] for h in plain.history]


def test_a_trainer_that_does_not_write_trains_the_same(tiny_data, tmp_path, capsys):
    silent = _trainer(tiny_data, tmp_path / 'silent', is_writer=False, quiet=False)
    result = silent.fit()
    assert not (tmp_path / 'silent').exists()
    captured = capsys.readouterr()
    assert captured.out == captured.err == ''
    written = _trainer(tiny_data, tmp_path / 'written').fit()
    assert (tmp_path / 'written' / 'results.json').is_file()
    assert [h['valid'] for h in result.history] == [h['valid'] for h in
                                                     written.history]


def test_the_early_stopping_decision_is_one_method(tiny_data):
    calls = []

    class StopAfterTwo(Trainer):
        def should_stop(self) -> bool:  # e.g. what rank 0 decided, broadcast
            calls.append(self.state.epoch)
            return self.state.epoch >= 2

    seed_everything(3)
    cfg = _cfg(max_epochs=5)
    run_config = Config(data=DataConfig(synthetic='tiny'), model=MFConfig(), train=cfg)
    result = StopAfterTwo(MF(tiny_data, run_config.model), tiny_data, run_config,
                          quiet=True).fit()
    assert result.status == 'early_stopped' and result.epochs == 2
    assert calls == [0, 1, 2]
