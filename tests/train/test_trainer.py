"""Trainer mechanics: protocol, determinism, checkpoints, resume, Ctrl-C, NaN.

A small matrix-factorisation model registered from the tests (tests/support.py)
keeps these tests fast; end-to-end runs with MambaRec itself are in
test_acceptance.py.
"""
import json
import math

import pytest
import torch

from support import MF, MFConfig

from mambarec_pyg.config import ConfigError, TrainConfig
from mambarec_pyg.data import make_synthetic
from mambarec_pyg.train.checkpoint import load_checkpoint, seed_everything
from mambarec_pyg.train.evaluate import evaluate
from mambarec_pyg.train.trainer import Trainer, TrainingDivergedError, make_optimizer



@pytest.fixture(scope='module')
def data():
    return make_synthetic('tiny', seed=0)


def _cfg(**kw):
    base = dict(seed=3, device='cpu', batch_size=128, max_epochs=4, lr=1e-2,
                checkpoint_interval_s=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _mf(data, dropout=0.1):
    return MF(data, MFConfig(dropout=dropout))


def _train(data, cfg, out=None, dropout=0.1, **kw):
    seed_everything(cfg.seed)
    model = _mf(data, dropout=dropout)
    result = Trainer(model, data, cfg, out, quiet=True, **kw).fit()
    return model, result


def test_learns_and_reports_test_at_best_valid_epoch(data, tmp_path):
    model, result = _train(data, _cfg(max_epochs=6), tmp_path)
    assert result.epochs == 6 and result.status == 'max_epochs'
    hist = result.history
    assert hist[-1]['loss']['bpr'] < hist[0]['loss']['bpr']
    assert list(hist[0]['loss']) == ['total', 'bpr', 'reg']  # what the model returns
    valid = [h['valid']['recall@20'] for h in hist]
    assert result.best_epoch == max(range(6), key=lambda e: (valid[e], -e))
    assert result.test == hist[result.best_epoch]['test']
    # the model holds the best epoch's weights: re-evaluating reproduces the record
    assert evaluate(model, data, 'test')['recall@20'] == pytest.approx(
        result.test['recall@20'])
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['status'] == 'max_epochs' and saved['best_epoch'] == result.best_epoch
    assert saved['test']['recall@20'] == pytest.approx(result.test['recall@20'])
    assert {'python', 'torch', 'torch_geometric', 'num_threads', 'device_name'} <= set(
        saved['environment'])
    assert len(saved['history']) == 6 and 'train_s' in saved['timings']
    for name in ('best.pt', 'last.pt', 'train.log'):
        assert (tmp_path / name).is_file()
    ck = load_checkpoint(tmp_path / 'best.pt')
    assert ck['epoch'] == result.best_epoch + 1 and ck['kind'] == 'best'
    assert ck['model_name'] == 'test_mf' and 'optimizer' not in ck


def test_learning_rate_schedule_continuous_exponent(data):
    cfg = _cfg(max_epochs=3, lr_decay=0.5, lr_decay_epochs=2.0)
    _, result = _train(data, cfg)
    lrs = [h['lr'] for h in result.history]
    assert lrs == pytest.approx([1e-2 * 0.5**(e / 2) for e in range(3)])


def test_adam_fused_without_weight_decay(data):
    opt = make_optimizer(_mf(data).parameters(), 1e-3)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults['weight_decay'] == 0 and opt.defaults['lr'] == 1e-3
    assert opt.defaults['fused']


def test_same_seed_same_metrics_different_seed_differs(data):
    _, a = _train(data, _cfg())
    _, b = _train(data, _cfg())
    _, c = _train(data, _cfg(seed=4))
    strip = lambda r: [{k: v for k, v in h.items() if not k.endswith('_s')}
                       for h in r.history]
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_early_stopping_patience_and_warmup(data):
    # lr 0 -> the valid metric never improves after epoch 0
    cfg = _cfg(lr=1e-12, max_epochs=50, patience=2)
    _, r = _train(data, cfg)
    assert r.status == 'early_stopped' and r.best_epoch == 0
    assert r.epochs == 1 + 3  # stops once more than `patience` epochs fail to improve
    _, r = _train(data, _cfg(lr=1e-12, max_epochs=50, patience=2, patience_warmup=5))
    assert r.epochs == 5 + 3


def test_on_epoch_start_is_called_and_logged(data):
    seed_everything(0)
    model = _mf(data)
    result = Trainer(model, data, _cfg(max_epochs=3), quiet=True).fit()
    assert model.epochs_started == [0, 1, 2]
    assert [h['started'] for h in result.history] == [0, 1, 2]


def test_protocol_defaults_come_from_the_model(data):
    # MF declares no protocol: MMRec's (no decay, no weight decay)
    trainer = Trainer(_mf(data), data, _cfg())
    assert trainer.config.lr_decay == 1.0 and trainer.config.weight_decay == 0.0
    from mambarec_pyg.models import MambaRec
    mamba = MambaRec(data)
    assert Trainer(mamba, data, _cfg()).config.lr_decay == 0.96
    # an explicit value wins
    assert Trainer(mamba, data, _cfg(lr_decay=0.5)).config.lr_decay == 0.5
    trainer = Trainer(_mf(data), data, _cfg(weight_decay=1e-3))
    trainer._setup()
    assert trainer.optimizer.defaults['weight_decay'] == 1e-3


def test_resume_gives_exactly_the_uninterrupted_run(data, tmp_path):
    straight_model, straight = _train(data, _cfg(max_epochs=5), tmp_path / 'a')
    _train(data, _cfg(max_epochs=2), tmp_path / 'b')
    seed_everything(12345)  # a different global state must not matter
    resumed_model = _mf(data)
    resumed = Trainer(resumed_model, data, _cfg(max_epochs=5), tmp_path / 'b',
                      resume=True, quiet=True).fit()
    assert resumed.epochs == 5
    assert resumed.best_epoch == straight.best_epoch
    assert resumed.test == straight.test
    assert [h['valid'] for h in resumed.history] == [h['valid'] for h in
                                                     straight.history]
    a = load_checkpoint(tmp_path / 'a' / 'last.pt')['model']
    b = load_checkpoint(tmp_path / 'b' / 'last.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_rejects_a_different_protocol(data, tmp_path):
    _train(data, _cfg(max_epochs=1), tmp_path)
    with pytest.raises(ConfigError, match='train.batch_size: 128 in the checkpoint, '
                       '64 now'):
        Trainer(_mf(data), data, _cfg(batch_size=64), tmp_path, resume=True,
                quiet=True).fit()


def test_ctrl_c_stops_cleanly_keeps_best_and_resumes_exactly(data, tmp_path):
    seed_everything(3)
    model = _mf(data)
    calls = {'n': 0}
    original = model.loss

    def loss(*args, **kw):  # Ctrl-C in the middle of epoch 2
        calls['n'] += 1
        if calls['n'] == 2 * 7 + 3:
            raise KeyboardInterrupt
        return original(*args, **kw)

    model.loss = loss
    r = Trainer(model, data, _cfg(max_epochs=5), tmp_path / 'run', quiet=True).fit()
    assert r.status == 'interrupted' and r.epochs == 2
    assert r.best_epoch in (0, 1) and r.test
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert saved['status'] == 'interrupted'
    assert load_checkpoint(tmp_path / 'run' / 'last.pt')['epoch'] == 2
    # best weights are back in the model
    assert evaluate(model, data, 'test')['recall@20'] == pytest.approx(
        r.test['recall@20'])
    # resuming completes exactly like an uninterrupted run
    resumed = Trainer(_mf(data), data, _cfg(max_epochs=5), tmp_path / 'run',
                      resume=True, quiet=True).fit()
    _, straight = _train(data, _cfg(max_epochs=5))
    assert resumed.test == straight.test
    assert [h['valid'] for h in resumed.history] == [h['valid'] for h in
                                                     straight.history]


def test_interrupt_from_callback(data, tmp_path):
    def stop(trainer, record):
        if record['epoch'] == 1:
            raise KeyboardInterrupt

    _, r = _train(data, _cfg(max_epochs=5), tmp_path, callbacks=[stop])
    assert r.status == 'interrupted' and r.epochs == 2


def test_sigterm_stops_like_ctrl_c(data, tmp_path):
    import os
    import signal

    def terminate(trainer, record):
        if record['epoch'] == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    _, r = _train(data, _cfg(max_epochs=5), tmp_path, callbacks=[terminate])
    assert r.status == 'interrupted' and r.epochs == 2
    assert json.loads((tmp_path / 'results.json').read_text())['status'] == \
        'interrupted'
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(data, tmp_path):
    seed_everything(3)
    model = _mf(data)
    original = model.loss
    calls = {'n': 0}

    def loss(*args, **kw):
        calls['n'] += 1
        parts = original(*args, **kw)
        if calls['n'] == 7 + 4:  # epoch 1, batch 4
            nan = parts['bpr'] * math.nan
            return dict(parts, total=nan, bpr=nan)
        return parts

    model.loss = loss
    with pytest.raises(TrainingDivergedError) as info:
        trainer = Trainer(model, data, _cfg(), tmp_path, quiet=True)
        trainer.fit()
    msg = str(info.value)
    assert 'epoch 1, batch 4 of 7' in msg and 'bpr=nan' in msg and 'reg=' in msg
    assert 'last.pt' in msg
    ck = load_checkpoint(tmp_path / 'last.pt')
    assert ck['epoch'] == 1 and all(torch.isfinite(v).all() for v in
                                    ck['model'].values())
    saved = json.loads((tmp_path / 'results.json').read_text())
    assert saved['status'] == 'diverged' and 'epoch 1, batch 4' in saved['error']


def test_quiet_false_prints_epoch_lines(data, capsys):
    seed_everything(0)
    Trainer(_mf(data), data, _cfg(max_epochs=1), quiet=False).fit()
    err = capsys.readouterr()
    text = err.out + err.err
    assert 'epoch    0' in text and 'bpr' in text and 'valid recall@20' in text


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_training_matches_cpu(data):
    # no dropout: CPU and CUDA generators give different masks
    _, cpu = _train(data, _cfg(max_epochs=2), dropout=0.0)
    _, gpu = _train(data, _cfg(max_epochs=2, device='cuda'), dropout=0.0)
    for h_cpu, h_gpu in zip(cpu.history, gpu.history):
        assert h_gpu['loss']['bpr'] == pytest.approx(h_cpu['loss']['bpr'], rel=1e-4)
        for k, v in h_cpu['valid'].items():
            assert h_gpu['valid'][k] == pytest.approx(v, abs=0.02), k


def test_deterministic_algorithms_during_fit_only(data):
    seen = []
    before = torch.are_deterministic_algorithms_enabled()
    _train(data, _cfg(max_epochs=1),
           callbacks=[lambda t, r: seen.append(torch.are_deterministic_algorithms_enabled())])
    assert seen == [True]
    assert torch.are_deterministic_algorithms_enabled() == before
    seen.clear()
    _train(data, _cfg(max_epochs=1, deterministic=False),
           callbacks=[lambda t, r: seen.append(torch.are_deterministic_algorithms_enabled())])
    assert seen == [False]
