"""Hardening of training runs: a diverging run never evaluates or saves non-finite
weights and says exactly what is on disk; ``evaluate`` / ``recommend`` refuse a
diverged checkpoint; a killed write's temporaries are removed by the next run; a new
run in a directory that holds an earlier one leaves it as it was until it writes its
own record (``train.log`` included), and never mixes the two; the resume message
names a changed model once; ``fit()`` leaves the model in eval mode.

The trainer-level tests use the small MF model of tests/support.py; the command-line
ones MambaRec on the ``tiny`` preset, for one or two epochs."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from support import MF, MFConfig, one_line as _one_line, snapshot as _snapshot

from mambarec_pyg.cli import main
from mambarec_pyg.config import Config, ConfigError, DataConfig, TrainConfig
from mambarec_pyg.errors import NonFiniteError, TrainingDivergedError
from mambarec_pyg.io import atomic_path, leftover_temporaries
from mambarec_pyg.models.registry import get_config_class
from mambarec_pyg.train.checkpoint import (first_nonfinite, load_checkpoint,
                                           save_checkpoint, seed_everything)
from mambarec_pyg.train.rundir import check_resume
from mambarec_pyg.train.step import TrainingStep
from mambarec_pyg.train.trainer import Trainer

FAST = ['--train.batch-size', '256', '--device', 'cpu', '--quiet',
        '--train.num-threads', '1']


def _train(out: Path, *extra: str, epochs: int = 1) -> int:
    return main(['train', '--synthetic', 'tiny', '--output', str(out),
                 '--train.max-epochs', str(epochs), *FAST, *extra])


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
    """A finished one-epoch MambaRec run; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp('runs') / 'run'
    assert _train(out) == 0
    return out


@pytest.fixture()
def run_copy(base_run, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(base_run, out)
    return out


def _cfg(**kw) -> TrainConfig:
    base = dict(seed=3, device='cpu', batch_size=128, max_epochs=4, lr=1e-2,
                checkpoint_interval_s=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _mf_trainer(data, out=None, cfg=None, **kw) -> Trainer:
    seed_everything(3)
    config = Config(data=DataConfig(synthetic='tiny'), model=MFConfig(),
                    train=cfg or _cfg())
    kw.setdefault('quiet', True)
    return Trainer(MF(data, config.model), data, config, out, **kw)


class _CorruptingStep(TrainingStep):
    """The plain step, but after the last update of epoch ``epoch`` one weight of
    ``model.item`` becomes ``value``: an update that overflowed while the loss
    stayed finite."""

    def __init__(self, model, optimizer, epoch: int, value: float,
                 batches: int) -> None:
        super().__init__(model, optimizer)
        self.epoch, self.value, self.batches, self.calls = epoch, value, batches, 0

    def update(self, parts):
        super().update(parts)
        self.calls += 1
        if self.calls == (self.epoch + 1) * self.batches:
            with torch.no_grad():
                self.model.item[5, 3] = self.value


def _corrupting(data, epoch: int, value: float):
    batches = -(-data['user', 'interacts', 'item'].edge_index.size(1) // 128)
    return lambda model, opt: _CorruptingStep(model, opt, epoch, value, batches)


# ---------------------------------------------------------------------------------
# Divergence: never evaluated, never saved, and the message says what is on disk
# ---------------------------------------------------------------------------------
def test_first_nonfinite_matches_a_plain_scan():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        tensors = {f't{i}': torch.randn(int(torch.randint(1, 30, (1, ), generator=g)),
                                        generator=g) for i in range(6)}
        tensors['ints'] = torch.arange(4)
        if trial % 3:
            name = f't{trial % 6}'
            t = tensors[name]
            t[int(torch.randint(0, t.numel(), (1, ), generator=g))] = \
                [math.nan, math.inf, -math.inf][trial % 3]
        expected = next(((n, int(torch.isnan(t).sum()), int(torch.isinf(t).sum()))
                         for n, t in tensors.items() if t.is_floating_point() and
                         not all(math.isfinite(v) for v in t.tolist())), None)
        found = first_nonfinite(tensors.items())
        assert (found and (found.name, found.nan, found.inf)) == (expected or None)
    # finite values whose l1 norm overflows are not reported
    assert first_nonfinite([('big', torch.full((8, ), 3e38))]) is None
    assert first_nonfinite([('half', torch.full((4, ), 6e4, dtype=torch.half))]) is None


@pytest.mark.cuda
def test_first_nonfinite_on_cuda():
    # the fused kernel on the device: a NaN among many finite tensors is found
    tensors = {f't{i}': torch.randn(100, 7, device='cuda') for i in range(40)}
    tensors['t31'][50, 3] = math.nan
    tensors['t7'] = tensors['t7'].double()
    found = first_nonfinite(tensors.items())
    assert (found.name, found.nan, found.inf) == ('t31', 1, 0)
    tensors['t31'][50, 3] = 0.0
    assert first_nonfinite(tensors.items()) is None


def test_weights_that_overflow_stop_before_the_epoch_is_evaluated(tiny_data, tmp_path):
    out = tmp_path / 'run'
    trainer = _mf_trainer(tiny_data, out,
                          step_factory=_corrupting(tiny_data, 1, math.nan))
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    msg = str(info.value)
    assert 'non-finite weights after the training steps of epoch 1' in msg
    assert "parameter 'item' (1 NaN of 960 values)" in msg
    assert 'before the epoch was evaluated or saved' in msg
    assert (f'On disk: {out} holds best.pt (the weights of epoch 0), last.pt '
            f'(resumable after epoch 0), results.json.') in msg
    # epoch 1 was never evaluated nor recorded; every file holds finite weights
    assert [r['epoch'] for r in trainer.state.history] == [0]
    for name in ('best.pt', 'last.pt'):
        state = load_checkpoint(out / name)
        assert state['epoch'] == 1 and first_nonfinite(state['model'].items()) is None
    record = json.loads((out / 'results.json').read_text())
    assert record['status'] == 'diverged' and record['error'] == msg
    assert record['checkpoints'] == {'best': str(out / 'best.pt'),
                                     'last': str(out / 'last.pt')}
    assert msg in (out / 'train.log').read_text()
    # the best weights are back in the model, which is in eval mode
    assert first_nonfinite(trainer.model.state_dict().items()) is None
    assert not trainer.model.training


def test_infinite_weights_in_the_first_epoch_leave_no_checkpoint(tiny_data, tmp_path):
    out = tmp_path / 'run'
    trainer = _mf_trainer(tiny_data, out,
                          step_factory=_corrupting(tiny_data, 0, -math.inf))
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    msg = str(info.value)
    assert 'epoch 0' in msg and "'item' (1 infinite of 960 values)" in msg
    assert msg.endswith(f'On disk: no checkpoint or results were written to {out} '
                        f'(only train.log).')
    assert _snapshot(out).keys() == {'train.log'}
    assert trainer.state.history == [] and trainer.state.best_weights is None


def test_a_diverged_run_names_only_the_files_that_exist(tiny_data, tmp_path):
    # last.pt is not due (a long interval): the divergence writes best.pt and the
    # results, which must not name a last.pt
    out = tmp_path / 'run'
    trainer = _mf_trainer(tiny_data, out, _cfg(checkpoint_interval_s=3600),
                          step_factory=_corrupting(tiny_data, 2, math.inf))
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    msg = str(info.value)
    best = trainer.state.best_epoch
    assert best in (0, 1)
    assert msg.endswith(f'On disk: {out} holds best.pt (the weights of epoch {best}), '
                        f'results.json.')
    assert 'last.pt' not in msg and not (out / 'last.pt').exists()
    record = json.loads((out / 'results.json').read_text())
    assert record['checkpoints'] == {'best': str(out / 'best.pt')}
    assert load_checkpoint(out / 'best.pt')['epoch'] == best + 1


def test_the_diverging_command_evaluates_and_saves_nothing(tmp_path, capsys):
    # the reproduction (one batch per epoch): lr 1e20 gives weights around
    # 1e20 after epoch 0, whose embeddings are NaN
    out = tmp_path / 'run'
    assert _train(out, '--train.lr', '1e20', '--train.batch-size', '2048',
                  epochs=3) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('mambarec train: error: non-finite embeddings after the '
                           'training steps of epoch 0')
    assert 'the largest weight: 1e+20' in line
    assert line.endswith(f'On disk: no checkpoint or results were written to {out} '
                         f'(only train.log).')
    assert _snapshot(out).keys() == {'train.log'}
    assert 'valid recall@20' not in (out / 'train.log').read_text()  # not evaluated


def _diverged_copy(base_run: Path, tmp_path: Path, how: str) -> Path:
    """``base_run`` with a best.pt whose weights are NaN in one place, or finite but
    so large that the embeddings are NaN."""
    out = tmp_path / 'diverged'
    shutil.copytree(base_run, out)
    state = load_checkpoint(out / 'best.pt')
    weights = state['model']
    if how == 'nan':
        weights['item_embedding.weight'][3, 2] = math.nan
    else:
        for name, t in weights.items():
            if t.is_floating_point() and 'running' not in name:
                t.mul_(1e20)
    save_checkpoint(out / 'best.pt', state)
    return out


@pytest.mark.parametrize('how, message', [
    ('nan', "the weights are not finite (tensor 'item_embedding.weight' (1 NaN of "
            "3840 values))"),
    ('huge', "embeddings are not finite"),
])
def test_evaluate_and_recommend_refuse_diverged_weights(base_run, tmp_path, capsys,
                                                        how, message):
    out = _diverged_copy(base_run, tmp_path, how)
    capsys.readouterr()
    for argv in (['evaluate', str(out)], ['recommend', str(out), '--users', '0,1']):
        assert main(argv + ['--device', 'cpu']) == 1
        captured = capsys.readouterr()
        line = _one_line(captured.err)
        assert line.startswith(f'mambarec {argv[0]}: error: {out / "best.pt"}: '
                               f'refused: ')
        assert message in line and 'diverged' in line
        assert captured.out == ''


def test_recommend_refuses_non_finite_scores(tiny_data):
    from mambarec_pyg.train.evaluate import evaluate, recommend
    model = MF(tiny_data, MFConfig(dropout=0.0))
    with torch.no_grad():
        model.item[7] = math.inf
    with pytest.raises(NonFiniteError, match='user 0: the model scores items'):
        recommend(model, [0, 1], k=5)
    with pytest.raises(NonFiniteError, match="the model's item embeddings are not "
                                             "finite \\(16 infinite of 960 values\\)"):
        evaluate(model, tiny_data, 'valid')


# ---------------------------------------------------------------------------------
# fit() leaves the model in eval mode
# ---------------------------------------------------------------------------------
def test_fit_leaves_the_model_in_eval_mode(tiny_data):
    trainer = _mf_trainer(tiny_data, cfg=_cfg(max_epochs=1))
    assert trainer.model.training  # a fresh module
    trainer.fit()
    assert not trainer.model.training
    # also when the run stops with an error
    failing = _mf_trainer(tiny_data, cfg=_cfg(max_epochs=2),
                          step_factory=_corrupting(tiny_data, 0, math.nan))
    with pytest.raises(TrainingDivergedError):
        failing.fit()
    assert not failing.model.training
    assert not any(m.training for m in failing.model.modules())


# ---------------------------------------------------------------------------------
# Temporaries left by a killed write
# ---------------------------------------------------------------------------------
def test_leftover_temporaries_match_the_atomic_writers_names(tmp_path):
    target = tmp_path / 'last.pt'
    with atomic_path(target) as tmp:
        tmp.write_bytes(b'half')
        # what a process killed here leaves behind
        assert leftover_temporaries(target) == [tmp]
    assert leftover_temporaries(target) == []
    assert leftover_temporaries(tmp_path / 'missing' / 'last.pt') == []


_LEFTOVERS = ('.last.pt.abc12345.tmp', '.best.pt.zz_9q8w7.tmp',
              '.results.json.k3j4h5g6.tmp', '.config.yaml.a1b2c3d4.tmp')
_NOT_OURS = ('.last.pt.tmp', '.last.pt..tmp', '.last.pt.abc.tmp.bak',
             'last.pt.abc12345.tmp', '.other.pt.abc12345.tmp', '.last.pt.ab-cd.tmp',
             '.train.log.abc12345.tmp', 'notes.tmp')


def _litter(out: Path) -> None:
    for name in _LEFTOVERS:
        (out / name).write_bytes(b'\0' * 1000)
    for name in _NOT_OURS:
        (out / name).write_text('keep me')
    (out / '.last.pt.dir12345.tmp').mkdir()  # a directory of that name: not a file
    (out / '.best.pt.link1234.tmp').symlink_to(out / 'notes.tmp')  # a link


@pytest.mark.parametrize('how', ['--resume', '--overwrite'])
def test_resume_and_overwrite_remove_only_this_runs_temporaries(run_copy, capsys, how):
    _litter(run_copy)
    assert _train(run_copy, how, epochs=2) == 0
    names = {p.name for p in run_copy.iterdir()}
    assert not names & set(_LEFTOVERS)
    assert set(_NOT_OURS) | {'.last.pt.dir12345.tmp', '.best.pt.link1234.tmp'} <= names
    assert (run_copy / 'notes.tmp').read_text() == 'keep me'
    log = (run_copy / 'train.log').read_text()
    assert ('removed 4 temporary file(s) that an interrupted write left in '
            f'{run_copy}: ' + ', '.join(sorted(_LEFTOVERS, key=lambda n: (
                ['last.pt', 'best.pt', 'results.json', 'config.yaml'].index(
                    n[1:].rsplit('.', 2)[0]))))) in log


# ---------------------------------------------------------------------------------
# A new run over an earlier one (--overwrite): all or nothing, train.log included
# ---------------------------------------------------------------------------------
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_an_overwrite_stopped_in_its_first_epoch_leaves_everything_as_it_was(
        run_copy, capsys, monkeypatch):
    from mambarec_pyg.models.mambarec import MambaRec
    before = _snapshot(run_copy)
    monkeypatch.setattr(MambaRec, 'loss', _interrupt)
    assert _train(run_copy, '--overwrite', epochs=2) == 130
    assert _snapshot(run_copy) == before  # train.log included


def test_an_overwrite_that_diverges_in_its_first_epoch_changes_nothing(run_copy,
                                                                       capsys):
    before = _snapshot(run_copy)
    capsys.readouterr()
    assert _train(run_copy, '--overwrite', '--train.lr', '1e20', epochs=2) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.endswith(f"On disk: nothing was written to {run_copy}; the earlier "
                         f"run's files there are as they were.")
    assert _snapshot(run_copy) == before


def test_an_overwrite_starts_a_fresh_log(run_copy, capsys):
    old_log = (run_copy / 'train.log').read_text()
    assert _train(run_copy, '--overwrite', '--train.seed', '5', epochs=1) == 0
    log = (run_copy / 'train.log').read_text()
    assert old_log.splitlines()[0] not in log
    assert log.count('training mambarec on cpu') == 1
    assert log.splitlines()[0].endswith('training mambarec on cpu (1 threads): 777 '
                                        'training pairs, 4 batches of 256, optimiser '
                                        'Adam (fused), lr 0.001, weight decay 0, lr '
                                        'decay 0.96 per 50 epochs')
    assert (f'this run replaces the earlier run in {run_copy} (removed its '
            f'results.json, best.pt, last.pt, config.yaml, train.log, metrics.csv, '
            f'metrics.jsonl)') in log
    record = json.loads((run_copy / 'results.json').read_text())
    assert record['config']['train']['seed'] == 5


def test_a_new_run_never_mixes_with_the_earlier_ones_files(tiny_data, tmp_path):
    out = tmp_path / 'run'
    _mf_trainer(tiny_data, out, _cfg(max_epochs=2)).fit()  # writes last.pt
    assert (out / 'last.pt').is_file()

    def stop(trainer, record):
        if record['epoch'] == 0:
            raise KeyboardInterrupt

    # a new run whose last.pt is not due yet, interrupted after its first epoch
    second = _mf_trainer(tiny_data, out, _cfg(max_epochs=3, checkpoint_interval_s=3600,
                                              seed=4), callbacks=[stop])
    result = second.fit()
    assert result.status == 'interrupted'
    assert not (out / 'last.pt').exists()  # the earlier run's is gone, not mixed in
    record = json.loads((out / 'results.json').read_text())
    assert record['status'] == 'interrupted' and record['epochs'] == 1
    assert record['config']['train']['seed'] == 4
    assert record['checkpoints'] == {'best': str(out / 'best.pt')}
    assert load_checkpoint(out / 'best.pt')['config']['train']['seed'] == 4


def test_resume_without_last_pt_continues_the_log(tiny_data, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'train.log').write_text('an earlier attempt\n')
    _mf_trainer(tiny_data, out, _cfg(max_epochs=1), resume=True).fit()
    log = (out / 'train.log').read_text()
    assert log.startswith('an earlier attempt\n')
    assert f'no checkpoint in {out}; starting a new run' in log


# ---------------------------------------------------------------------------------
# The resume message names a changed model once
# ---------------------------------------------------------------------------------
def test_resume_with_another_model_names_it_once():
    old = Config(data=DataConfig(synthetic='tiny'))
    new = Config(data=DataConfig(synthetic='tiny'),
                 model=get_config_class('lightgcn')())
    saved = {'config': old.to_dict(), 'model_name': 'mambarec'}
    with pytest.raises(ConfigError) as info:
        check_resume('DIR/last.pt', saved, config=new.to_dict(),
                     train=new.to_dict()['train'], dataset={}, model_name='lightgcn')
    msg = str(info.value)
    assert msg.count('model.name') == 1
    assert msg.startswith("DIR/last.pt: cannot resume with different settings "
                          "(model.name: 'mambarec' in the checkpoint, 'lightgcn' now)")
    # the same model with another option still names that option
    with pytest.raises(ConfigError, match="model.mmd_weight: 0.15 in the checkpoint, "
                                          "0.3 now\\)"):
        other = Config(data=DataConfig(synthetic='tiny'),
                       model=get_config_class('mambarec')(mmd_weight=0.3))
        check_resume('DIR/last.pt', saved, config=other.to_dict(),
                     train=other.to_dict()['train'], dataset={},
                     model_name='mambarec')


def test_first_nonfinite_reads_the_values_of_sparse_tensors():
    """Sparse embeddings (ItemKNNCBF) are checked through their stored values."""
    import torch
    from mambarec_pyg.train.checkpoint import first_nonfinite
    i = torch.tensor([[0, 1], [1, 0]])
    ok = torch.sparse_coo_tensor(i, torch.tensor([1.0, 2.0]), (2, 2))
    bad = torch.sparse_coo_tensor(i, torch.tensor([1.0, float('nan')]), (2, 2))
    assert first_nonfinite([('a', ok), ('b', ok.to_sparse_csr())]) is None
    found = first_nonfinite([('a', ok), ('b', bad.to_sparse_csr())])
    assert found is not None and found.name == 'b' and found.nan == 1
