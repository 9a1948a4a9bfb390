r"""Training with BPR triples, Adam, per-epoch validation and early stopping -- for any
registered model.

The protocol of MMRec (docs/reference.md §1), under which the paper's numbers, its
baselines' included, were produced:

* every training interaction once per epoch, shuffled, in batches of :math:`B`, one
  uniform negative per pair (:class:`~mambarec_pyg.data.sampling.TrainingPairs`);
  the model's :meth:`~mambarec_pyg.models.Recommender.loss` turns a batch into named
  loss parts, of which ``'total'`` is backpropagated and all are logged;
* Adam at ``lr`` with the model's weight decay, the learning rate multiplied by
  :math:`\mathrm{lr\_decay}^{\,e / \mathrm{lr\_decay\_epochs}}` during epoch
  :math:`e` (a continuous exponent, updated once per epoch). Options left ``None``
  take the model's :attr:`~mambarec_pyg.models.Recommender.protocol` (MMRec: no
  decay and no weight decay, except MambaRec and MGCN with 0.96 per 50 epochs and
  SLMRec with weight decay 1e-4);
* :meth:`~mambarec_pyg.models.Recommender.on_epoch_start` before every epoch (a
  warm-up, FREEDOM's edge pruning);
* after every epoch the valid split is evaluated (:mod:`~mambarec_pyg.train.evaluate`);
  the run stops once ``valid_metric`` (Recall@20) has not improved for more than
  ``patience`` epochs -- MMRec's rule: the counter resets on a strict improvement and
  the run stops when it *exceeds* ``patience`` -- or after ``max_epochs``;
* the reported test metrics are those of the epoch with the best valid metric (the
  test split is evaluated whenever the valid metric reaches a new best).

A model with nothing to train (most-popular) is evaluated once.

Reproducibility: every random draw is seeded from ``seed`` (Python, NumPy, torch, and a
:class:`torch.Generator` for the training pairs), and on the CPU training runs under
``torch.use_deterministic_algorithms`` (``deterministic``), so the same seed gives
bitwise the same run.

Checkpoints (:mod:`~mambarec_pyg.train.checkpoint`; safe to load, written
atomically), in the manner of PyTorch Lightning's ``ModelCheckpoint``:

* ``last.pt`` -- everything needed to resume (model, optimiser, scheduler, every RNG
  state, counters, history, config, and the best epoch's weights) -- is written at
  most once per ``checkpoint_interval_s`` seconds and at the end of the run; a
  resumed run ends with exactly the metrics and weights of an uninterrupted one (on
  the CPU), whatever epoch it resumes from;
* ``best.pt`` -- the best epoch's weights and config, for ``evaluate`` and
  ``recommend`` -- is written with ``last.pt`` when the best epoch changed, at the end
  and on interruption. The best weights are kept in memory meanwhile.

Ctrl-C (or SIGTERM) stops at once: the unfinished epoch is dropped, ``best.pt`` and
``results.json`` are written (the latter only if an epoch completed), and the best
weights are put back in the model. A non-finite loss stops the run with
:class:`TrainingDivergedError` naming the epoch, batch and loss parts (on the CPU
before the optimiser applies it; on a GPU, where checking every step would stall the
device, within 16 steps), and leaves the checkpoints on disk untouched. A run
directory belongs to one process at a time (:class:`~mambarec_pyg.train.rundir.RunLock`).
``results.json`` records the config, per-epoch history, best epoch, valid and test
metrics, timings, environment and any warnings (:meth:`Recommender.diagnose
<mambarec_pyg.models.Recommender.diagnose>`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from torch_geometric.data import HeteroData

from ..config import RESUMABLE_CHANGES, Config, ConfigError, TrainConfig, to_dict
from ..data.index import training_index
from ..data.sampling import TrainingPairs
from ..utils import progress, resolve_device
from .checkpoint import (CheckpointError, environment, load_checkpoint, rng_state,
                         save_checkpoint, seed_everything, set_rng_state, write_json)
from .evaluate import Evaluator
from .rundir import RunLock
from .step import TrainingStep

__all__ = ['Trainer', 'TrainResult', 'TrainingDivergedError', 'make_optimizer',
           'resolve_protocol']

log = logging.getLogger(__name__)

Callback = Callable[['Trainer', Dict[str, Any]], None]

# Steps between finiteness checks of the loss on a GPU (each check synchronises).
_CUDA_CHECK_EVERY = 16


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, batch and parts."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (also written to ``results.json``)."""

    #: ``'early_stopped'``, ``'max_epochs'``, ``'evaluated'`` (nothing to train) or
    #: ``'interrupted'``.
    status: str
    #: the epoch (0-based) with the best valid metric; ``-1`` if none completed.
    best_epoch: int
    #: valid and test metrics at ``best_epoch``.
    valid: Dict[str, float]
    test: Dict[str, float]
    #: epochs completed.
    epochs: int
    history: List[Dict[str, Any]] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    output_dir: Optional[str] = None
    #: warnings about the run (e.g. a loss that never moved).
    warnings: List[str] = field(default_factory=list)
    #: epochs completed by this :meth:`Trainer.fit` (``epochs`` less those resumed).
    new_epochs: int = 0
    #: the trained model (holding the best epoch's weights unless
    #: ``restore_best=False``).
    model: Optional[torch.nn.Module] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != 'model'}


def make_optimizer(parameters, lr: float, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """Adam (L2 weight decay added to the gradient, as MMRec's Adam); the fused kernel
    where the parameters allow it.

    ``fused=True`` is several times faster on a large trainable feature table
    (docs/reference.md §7: 31 ms vs 219 ms per step at Baby scale) and computes the
    same update; it needs floating-point parameters on a device with a fused kernel,
    otherwise the multi-tensor (``foreach``) implementation is used.
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError('the model has no trainable parameters')
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def resolve_protocol(config: TrainConfig, model: torch.nn.Module) -> TrainConfig:
    """``config`` with the fields left ``None`` taken from the model's protocol
    (:attr:`Recommender.protocol <mambarec_pyg.models.Recommender.protocol>`)."""
    protocol = dict(getattr(model, 'protocol', None) or {})
    defaults = {'lr_decay': 1.0, 'weight_decay': 0.0}
    changes = {}
    for name, fallback in defaults.items():
        if getattr(config, name) is None:
            changes[name] = protocol.get(name, fallback)
    return dataclasses.replace(config, **changes) if changes else config


class Trainer:
    r"""Trains a registered model on ``data`` under the MMRec protocol.

    Args:
        model (Recommender): any model of :mod:`mambarec_pyg.models`.
        data (HeteroData): the dataset (:func:`mambarec_pyg.load_mmrec` layout). It
            is not modified.
        config (TrainConfig or Config): the protocol; with a full :class:`Config`
            the whole of it is recorded in checkpoints and results (needed by
            ``mambarec evaluate`` / ``recommend`` to rebuild the model).
        output_dir: where ``best.pt``, ``last.pt``, ``results.json``,
            ``config.yaml`` and ``train.log`` go; ``None`` keeps everything in
            memory.
        resume: continue from ``output_dir/last.pt`` when it exists. Only the
            options in :data:`~mambarec_pyg.config.RESUMABLE_CHANGES` may differ
            from the checkpoint's; any other difference stops with
            :class:`~mambarec_pyg.config.ConfigError` before anything is written.
        quiet: no progress bars and no per-epoch lines on the console (the log file
            is still written).
        callbacks: called as ``callback(trainer, record)`` after every epoch.
        data_spec: how to load ``data`` again, recorded in checkpoints (by default
            ``config.data`` of a full :class:`Config`).
        restore_best: when :meth:`fit` returns, the model holds the weights of the
            best epoch (else those of the last epoch run).
        allow_no_valid: train on data without validation interactions (the last
            epoch is then reported); default ``config.data.allow_no_valid`` of a full
            :class:`Config`, else ``False`` (such data stops with an error).

    The model's initial weights are the caller's: seed before building it (e.g.
    :func:`~mambarec_pyg.utils.seed_everything`) for repeatable runs; :meth:`fit`
    seeds everything it consumes itself from ``config.seed``.
    """

    def __init__(self, model: torch.nn.Module, data: HeteroData,
                 config: Union[TrainConfig, Config, None] = None,
                 output_dir: Union[str, Path, None] = None, *, resume: bool = False,
                 quiet: bool = False, callbacks: Sequence[Callback] = (),
                 data_spec: Optional[Dict[str, Any]] = None,
                 restore_best: bool = True,
                 allow_no_valid: Optional[bool] = None) -> None:
        if config is None:
            config = TrainConfig()
        if isinstance(config, Config):
            run_config: Optional[Config] = config
            config = config.train
        else:
            run_config = None
        if not isinstance(config, TrainConfig):
            raise TypeError(f'config: expected a TrainConfig or Config, got '
                            f'{type(config).__name__}')
        self.config = resolve_protocol(config, model)
        self.run_config = (dataclasses.replace(run_config, train=self.config)
                           if run_config is not None else None)
        self.model = model
        self.data = data
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.resume = resume
        self.quiet = quiet
        self.callbacks = list(callbacks)
        if data_spec is None and self.run_config is not None:
            from ..data.dataset import data_spec as _spec
            data_spec = _spec(self.run_config.data)
        self.data_spec = data_spec
        if allow_no_valid is None:
            allow_no_valid = bool(run_config is not None and
                                  run_config.data.allow_no_valid)
        self.restore_best = restore_best
        self.device = resolve_device(self.config.device)

        self.index = training_index(data)
        self.evaluator = Evaluator(data, ks=self.config.topk,
                                   batch_size=self.config.eval_batch_size,
                                   device=self.device)
        self.has_valid = self.evaluator.has_split('valid')
        if not self.has_valid and not allow_no_valid:
            name = getattr(data, 'name', None) or 'the dataset'
            raise ConfigError(
                f'{name} has no validation interactions (x_label 1), so no epoch can '
                f'be selected and early stopping cannot work; add a validation split '
                f'or train without one with --data.allow-no-valid true (the last '
                f'epoch is then reported)')
        self.has_test = self.evaluator.has_split('test')
        self.generator = torch.Generator()
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self.pairs: Optional[TrainingPairs] = None
        #: the optimisation step (:class:`~mambarec_pyg.train.step.TrainingStep`;
        #: built with the optimiser when ``None``).
        self.step: Optional[TrainingStep] = None
        # run state
        self.epoch = 0  # epochs completed
        self.best_epoch = -1
        self.best_value = -math.inf
        self.best_valid: Dict[str, float] = {}
        self.best_test: Dict[str, float] = {}
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.bad_epochs = 0
        self.history: List[Dict[str, Any]] = []
        self.timings = {'train_s': 0.0, 'eval_s': 0.0, 'checkpoint_s': 0.0,
                        'total_s': 0.0}
        self.warnings: List[str] = []
        self._log_file = None
        self._written_epoch = 0  # epochs completed when last.pt was last written
        self._best_written = -1  # best epoch in best.pt
        self._config_written = False
        self._last_write = 0.0
        self._session_epochs = 0

    # -- paths ----------------------------------------------------------------------
    @property
    def best_path(self) -> Optional[Path]:
        return self.output_dir / 'best.pt' if self.output_dir else None

    @property
    def last_path(self) -> Optional[Path]:
        return self.output_dir / 'last.pt' if self.output_dir else None

    @property
    def results_path(self) -> Optional[Path]:
        return self.output_dir / 'results.json' if self.output_dir else None

    # -- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        state = None
        if self.resume and self.last_path is not None and self.last_path.is_file():
            try:
                state = load_checkpoint(self.last_path)
            except CheckpointError as e:
                raise CheckpointError(f'{e}; a run cannot be resumed from it: start '
                                      f'a new run (--overwrite or another --output)'
                                      ) from None
            self._check_resume(state)  # before anything on disk changes
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.model.to(self.device)
        if self.model.trainable:
            self.pairs = TrainingPairs(self.index)
            self.optimizer = make_optimizer(self.model.parameters(), cfg.lr,
                                            cfg.weight_decay)
            decay, every = cfg.lr_decay, cfg.lr_decay_epochs
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: decay**(e / every))
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.output_dir / 'train.log', 'a')
        if state is not None:
            self._restore(state)
            self._log(f'resumed from {self.last_path} after epoch {self.epoch - 1} '
                      f'(best {cfg.valid_metric} {self.best_value:.4f} at epoch '
                      f'{self.best_epoch})')
        else:
            if self.resume:
                self._log(f'no checkpoint in {self.output_dir}; starting a new run')
            seed_everything(cfg.seed)
            self.generator.manual_seed(cfg.seed)
            name = getattr(self.model, 'name', '') or type(self.model).__name__
            if self.pairs is not None:
                self._log(f'training {name} on {self.device} '
                          f'({torch.get_num_threads()} threads): '
                          f'{self.pairs.num_pairs:,} training pairs, '
                          f'{self.pairs.num_batches(cfg.batch_size)} batches of '
                          f'{cfg.batch_size}, optimiser '
                          f"Adam{' (fused)' if self._fused() else ''}, lr {cfg.lr:g}, "
                          f'weight decay {cfg.weight_decay:g}, lr decay '
                          f'{cfg.lr_decay:g} per {cfg.lr_decay_epochs:g} epochs')
            else:
                self._log(f'{name} has nothing to train; evaluating it once')
        self._note_thread_policy()
        self._last_write = time.monotonic()
        self._written_epoch = self.epoch

    def _note_thread_policy(self) -> None:
        """Say so when OpenMP threads may spin while waiting (torch was imported
        before mambarec_pyg could set ``OMP_WAIT_POLICY=PASSIVE``): with other work
        on the cores such runs can train many times slower."""
        from .. import OMP_POLICY_APPLIED
        if self.device.type == 'cpu' and torch.get_num_threads() > 1 and \
                not OMP_POLICY_APPLIED:
            self._log('note: torch was imported before mambarec_pyg, so its OpenMP '
                      'threads spin while they wait; if other work shares the CPU, '
                      'set OMP_WAIT_POLICY=PASSIVE in the environment or use '
                      '--train.num-threads 1 (benchmarks/threads.py)')

    def _fused(self) -> bool:
        return bool(self.optimizer.defaults.get('fused'))

    def _check_resume(self, state: Dict[str, Any]) -> None:
        """Stop, naming each field, if the run would continue with settings other
        than the checkpoint's (only :data:`RESUMABLE_CHANGES` may differ)."""
        diffs = []
        saved = state.get('config')
        if self.run_config is not None and isinstance(saved, dict):
            now = self.run_config.to_dict()
            for section in ('data', 'model', 'train'):
                old, new = saved.get(section) or {}, now.get(section) or {}
                for key in sorted(set(old) | set(new)):
                    dotted = f'{section}.{key}'
                    if dotted in RESUMABLE_CHANGES or (section == 'data'
                                                       and key == 'root'):
                        continue
                    if old.get(key) != new.get(key):
                        diffs.append(f'{dotted}: {old.get(key)!r} in the checkpoint, '
                                     f'{new.get(key)!r} now')
        else:
            old = state.get('train_config') or {}
            for key, value in to_dict(self.config).items():
                if f'train.{key}' not in RESUMABLE_CHANGES and key in old and \
                        old[key] != value:
                    diffs.append(f'train.{key}: {old[key]!r} in the checkpoint, '
                                 f'{value!r} now')
        shape = state.get('dataset') or {}
        now_shape = self._dataset_shape()
        for key in ('num_users', 'num_items', 'num_train_interactions'):
            if key in shape and shape[key] != now_shape[key]:
                diffs.append(f'dataset {key}: {shape[key]} in the checkpoint, '
                             f'{now_shape[key]} now')
        name = getattr(self.model, 'name', None)
        if state.get('model_name') and name and state['model_name'] != name:
            diffs.append(f'model.name: {state["model_name"]!r} in the checkpoint, '
                         f'{name!r} now')
        if diffs:
            raise ConfigError(
                f'{self.last_path}: cannot resume with different settings ('
                + '; '.join(diffs) + '); only '
                + ', '.join(RESUMABLE_CHANGES) + ' may change. Use the checkpoint\'s '
                'settings, or start a new run (--overwrite or another --output); '
                'nothing was changed on disk')

    def _restore(self, state: Dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state['model'])
        except RuntimeError as e:
            raise ConfigError(f'{self.last_path}: the checkpoint does not fit this '
                              f'model ({str(e).splitlines()[0]})') from None
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state['optimizer'])
            self.scheduler.load_state_dict(state['scheduler'])
        set_rng_state(state['rng'], self.generator)
        self.epoch = state['epoch']
        self.best_epoch = state['best_epoch']
        self.best_value = state['best_value']
        self.best_valid = state['best_valid']
        self.best_test = state['best_test']
        self.bad_epochs = state['bad_epochs']
        self.history = list(state['history'])
        self.timings.update(state.get('timings') or {})
        self.warnings = list(state.get('warnings') or [])
        best = state.get('best_model')
        if best is None and self.best_epoch == self.epoch - 1:
            best = state['model']
        self.best_state = ({k: v.to(self.device) for k, v in best.items()}
                           if best is not None else None)
        self._best_written = self.best_epoch

    def _dataset_shape(self) -> Dict[str, Any]:
        return {'name': str(getattr(self.data, 'name', '')),
                'num_users': int(self.data['user'].num_nodes),
                'num_items': int(self.data['item'].num_nodes),
                'num_train_interactions': self.index.num_pairs}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run (the content of ``last.pt``)."""
        state = self._common_state()
        state.update({
            'kind': 'last',
            'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict() if self.optimizer else None,
            'scheduler': self.scheduler.state_dict() if self.scheduler else None,
            'rng': rng_state(self.generator),
            'bad_epochs': self.bad_epochs,
            'history': self.history,
            'timings': self.timings,
            'warnings': self.warnings,
        })
        if self.best_state is not None and self.best_epoch != self.epoch - 1:
            state['best_model'] = self.best_state
        return state

    def _common_state(self) -> Dict[str, Any]:
        return {
            'model_name': getattr(self.model, 'name', '') or type(self.model).__name__,
            'epoch': self.epoch,
            'best_epoch': self.best_epoch,
            'best_value': self.best_value,
            'best_valid': self.best_valid,
            'best_test': self.best_test,
            'train_config': to_dict(self.config),
            'config': to_dict(self.run_config) if self.run_config else None,
            'data': self.data_spec,
            'dataset': self._dataset_shape(),
        }

    # -- logging ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        log.info(msg)
        if self._log_file is not None:
            self._log_file.write(time.strftime('%Y-%m-%d %H:%M:%S ') + msg + '\n')
            self._log_file.flush()
        if not self.quiet:
            from tqdm.auto import tqdm
            tqdm.write(msg)

    def _bar(self, **kwargs):
        return progress(enabled=not self.quiet, **kwargs)

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until early stopping, ``max_epochs`` or Ctrl-C; see the module doc."""
        cfg = self.config
        deterministic = cfg.deterministic
        if deterministic is None:
            deterministic = self.device.type == 'cpu'
        with contextlib.ExitStack() as stack:
            if self.output_dir is not None:
                stack.enter_context(RunLock(self.output_dir))
            stack.enter_context(_deterministic(deterministic, self.device))
            stack.enter_context(_stop_on_sigterm())
            return self._fit()

    def _fit(self) -> TrainResult:
        try:
            self._setup()
        except BaseException:
            self._close()
            raise
        if self.optimizer is None:
            return self._evaluate_only()
        cfg = self.config
        status = 'max_epochs'
        start = time.perf_counter()
        total_before = self.timings.get('total_s', 0.0)
        epochs_bar = self._bar(total=cfg.max_epochs, initial=self.epoch, desc='epochs',
                               unit='epoch')
        try:
            while self.epoch < cfg.max_epochs:
                if self.bad_epochs > cfg.patience:
                    status = 'early_stopped'
                    break
                record = self._run_epoch(self.epoch)
                self.epoch += 1
                self._session_epochs += 1
                self.timings['total_s'] = total_before + time.perf_counter() - start
                self._maybe_checkpoint()
                epochs_bar.update(1)
                epochs_bar.set_postfix({cfg.valid_metric: record['valid'].get(
                    cfg.valid_metric, float('nan')), 'best': self.best_value})
                for cb in self.callbacks:
                    cb(self, record)
            else:
                if self.bad_epochs > cfg.patience:
                    status = 'early_stopped'
        except KeyboardInterrupt:
            epochs_bar.close()
            return self._interrupted(total_before, start)
        except TrainingDivergedError as e:
            self.timings['total_s'] = total_before + time.perf_counter() - start
            self._log(str(e))
            self._write_best()
            if self.epoch > 0:
                self._write_results('diverged', error=str(e))
            self._close(epochs_bar)
            raise
        except BaseException:
            self._close(epochs_bar)
            raise
        self.timings['total_s'] = total_before + time.perf_counter() - start
        if status == 'early_stopped':
            self._log(f'early stopping: {cfg.valid_metric} has not improved for '
                      f'{self.bad_epochs} epochs (patience {cfg.patience})')
        self._finish(status)
        self._close(epochs_bar)
        return self._result(status)

    def _evaluate_only(self) -> TrainResult:
        """A model with nothing to train: evaluate once as epoch 0."""
        t0 = time.perf_counter()
        valid = self.evaluator(self.model, 'valid') if self.has_valid else {}
        test = self.evaluator(self.model, 'test') if self.has_test else {}
        eval_s = time.perf_counter() - t0
        self.epoch, self.best_epoch = 1, 0
        self.best_valid, self.best_test = valid, test
        self.best_value = valid.get(self.config.valid_metric, -math.inf)
        self.best_state = {k: v.detach().clone()
                           for k, v in self.model.state_dict().items()}
        self.history = [{'epoch': 0, 'loss': {}, 'train_s': 0.0, 'eval_s': eval_s,
                         'valid': valid, 'test': test, 'best': True}]
        self.timings['eval_s'] = eval_s
        self.timings['total_s'] = eval_s
        self.warnings = list(dict.fromkeys(self.warnings + self._split_warnings()))
        self._log(f'valid {_fmt(valid)} | test {_fmt(test)}')
        self._write_best()
        self._write_results('evaluated')
        self._close()
        return self._result('evaluated')

    def _interrupted(self, total_before: float, start: float) -> TrainResult:
        self.timings['total_s'] = total_before + time.perf_counter() - start
        if self._session_epochs == 0:
            self._log(f'interrupted during epoch {self.epoch} before it completed; '
                      f'nothing was written'
                      + (f' (the checkpoints of epoch {self.epoch - 1} are kept)'
                         if self.epoch > 0 and self.output_dir else ''))
            if self.restore_best:
                self.load_best()
            self._close()
            return self._result('interrupted')
        resume_from = self._written_epoch - 1
        self._write_best()
        self._write_results('interrupted')
        self._log(f'interrupted during epoch {self.epoch}; '
                  + (f'resume continues after epoch {resume_from} (last.pt)'
                     if self.output_dir and resume_from >= 0 else
                     'no last.pt was written yet' if self.output_dir else
                     'nothing is saved (no output directory)')
                  + (f'; best.pt holds epoch {self.best_epoch}'
                     if self.output_dir and self.best_epoch >= 0 else ''))
        if self.restore_best:
            self.load_best()
        self._close()
        return self._result('interrupted')

    def _finish(self, status: str) -> None:
        self.warnings = list(dict.fromkeys(
            self.warnings + self._split_warnings() + list(self._diagnose())))
        for w in self.warnings:
            self._log(f'warning: {w}')
        self._write_last()
        self._write_best()
        self._write_results(status)
        if self.restore_best:
            self.load_best()
        if self.best_epoch >= 0:
            self._log(f'best epoch {self.best_epoch}: valid {_fmt(self.best_valid)} | '
                      f'test {_fmt(self.best_test)}')

    def _split_warnings(self) -> List[str]:
        """What the results lack because the data have no valid or test split."""
        out = []
        if not self.has_valid:
            out.append('the data have no validation interactions (x_label 1): no '
                       'valid metrics, no early stopping, and the last epoch is '
                       'reported')
        if not self.has_test:
            out.append('the data have no test interactions (x_label 2): no test '
                       'metrics were computed')
        return out

    def _diagnose(self) -> List[str]:
        diagnose = getattr(self.model, 'diagnose', None)
        return diagnose(self.history) if callable(diagnose) else []

    def _run_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg = self.config
        model, opt = self.model, self.optimizer
        step = self.step if self.step is not None else TrainingStep(model, opt)
        extra = model.on_epoch_start(epoch) if hasattr(model, 'on_epoch_start') else None
        lr = opt.param_groups[0]['lr']
        model.train()
        t0 = time.perf_counter()
        num_batches = self.pairs.num_batches(cfg.batch_size)
        names: Optional[List[str]] = None
        sums = None
        recent: List[torch.Tensor] = []
        check_every = 1 if self.device.type == 'cpu' else _CUDA_CHECK_EVERY
        bar = self._bar(total=num_batches, desc=f'epoch {epoch}', unit='batch',
                        leave=False)
        try:
            for b, batch in enumerate(
                    self.pairs.epoch(cfg.batch_size, self.generator, self.device)):
                parts = step.forward(batch)
                if names is None:
                    names = _part_names(parts)
                    sums = torch.zeros(len(names), dtype=torch.float64,
                                       device=self.device)
                values = torch.stack([parts[n].detach().to(torch.float64).reshape(())
                                      for n in names])
                if check_every == 1:
                    if not bool(torch.isfinite(values).all()):
                        raise TrainingDivergedError(self._diverged_message(
                            epoch, b, num_batches, names, values))
                else:
                    recent.append(values)
                step.update(parts)
                sums += values
                if len(recent) >= check_every or (recent and b == num_batches - 1):
                    self._check_recent(epoch, b, num_batches, names, recent)
                    recent = []
                bar.update(1)
        finally:
            bar.close()
        self.scheduler.step()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        train_s = time.perf_counter() - t0
        means = (step.reduce(sums) / max(num_batches, 1)).tolist() \
            if sums is not None else []
        losses = dict(zip(names or [], means))

        t1 = time.perf_counter()
        valid = self.evaluator(model, 'valid') if self.has_valid else {}
        value = valid.get(cfg.valid_metric, 0.0) if self.has_valid else float(epoch)
        best = value > self.best_value
        test = None
        if best:
            test = self.evaluator(model, 'test') if self.has_test else {}
            self.best_value, self.best_epoch = value, epoch
            self.best_valid, self.best_test = valid, test
            self.best_state = {k: v.detach().clone()
                               for k, v in model.state_dict().items()}
            self.bad_epochs = 0
        elif epoch >= cfg.patience_warmup:
            self.bad_epochs += 1
        eval_s = time.perf_counter() - t1
        self.timings['train_s'] += train_s
        self.timings['eval_s'] += eval_s
        record: Dict[str, Any] = {'epoch': epoch, 'lr': lr, **(extra or {}),
                                  'loss': losses, 'train_s': train_s, 'eval_s': eval_s,
                                  'valid': valid, 'best': best}
        if test is not None:
            record['test'] = test
        self.history.append(record)
        shown = ' '.join(f'{k} {v:.4g}' for k, v in losses.items() if k != 'total')
        extras = ''.join(f' {k}={v}' for k, v in (extra or {}).items())
        metric = (f'valid {cfg.valid_metric} {value:.4f}' if self.has_valid else
                  'no valid split')
        self._log(f'epoch {epoch:4d} | train {train_s:6.1f}s | loss '
                  f'{losses.get("total", float("nan")):.4f} ({shown}){extras} | eval '
                  f'{eval_s:5.1f}s | {metric}'
                  + (' *' if best else f' (no improvement for {self.bad_epochs})'))
        return record

    def _check_recent(self, epoch: int, b: int, num_batches: int, names: List[str],
                      recent: List[torch.Tensor]) -> None:
        """The deferred (GPU) finiteness check of the last few steps."""
        stacked = torch.stack(recent)
        ok = torch.isfinite(stacked).all(dim=1)
        if bool(ok.all()):
            return
        first = int((~ok).nonzero()[0, 0])
        batch = b - len(recent) + 1 + first
        raise TrainingDivergedError(self._diverged_message(
            epoch, batch, num_batches, names, stacked[first],
            applied=len(recent) - first))

    def _diverged_message(self, epoch: int, batch: int, num_batches: int,
                          names: List[str], values: torch.Tensor,
                          applied: int = 0) -> str:
        parts = ', '.join(f'{n}={v:.6g}' for n, v in zip(names, values.tolist()))
        kept = (f'the checkpoints on disk (last.pt after epoch '
                f'{self._written_epoch - 1}) are kept'
                if self.last_path and self._written_epoch > 0 else
                'no checkpoint had been written')
        step = ('the step was not applied' if applied == 0 else
                f'{applied} step(s) were applied before the check on the GPU')
        return (f'non-finite loss at epoch {epoch}, batch {batch + 1} of {num_batches}: '
                f'{parts}; {step} and training stopped; {kept}. Lower the learning '
                f'rate or check the data for extreme feature values.')

    def load_best(self) -> bool:
        """Put the best epoch's weights into the model (from memory or ``best.pt``)."""
        state = self.best_state
        if state is None and self.best_path is not None and self._best_written >= 0 \
                and self.best_path.is_file():  # not an earlier run's best.pt
            state = load_checkpoint(self.best_path)['model']
        if state is None:
            return False
        self.model.load_state_dict(state)
        return True

    # -- outputs ----------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if self.output_dir is None:
            return
        interval = self.config.checkpoint_interval_s
        if interval == 0 or time.monotonic() - self._last_write >= interval:
            self._write_last()
            self._write_best()
            self._write_results('running')

    def _write_config(self) -> None:
        """``config.yaml``, after the run's first checkpoint or results (so a run
        stopped before that leaves an earlier run's files as they were)."""
        if self._config_written or self.output_dir is None or self.run_config is None:
            return
        self.run_config.to_yaml(self.output_dir / 'config.yaml')
        self._config_written = True

    def _write_last(self) -> None:
        if self.output_dir is None or self.optimizer is None or \
                (self._written_epoch == self.epoch and self.last_path.is_file()):
            return
        t0 = time.perf_counter()
        save_checkpoint(self.last_path, self.state_dict())
        self._write_config()
        self._written_epoch = self.epoch
        self._last_write = time.monotonic()
        self.timings['checkpoint_s'] = self.timings.get('checkpoint_s', 0.0) + \
            time.perf_counter() - t0

    def _write_best(self) -> None:
        if self.output_dir is None or self.best_state is None or \
                self.best_epoch == self._best_written:
            return
        t0 = time.perf_counter()
        state = self._common_state()
        # the weights are those after epoch best_epoch
        state.update({'kind': 'best', 'model': self.best_state,
                      'epoch': self.best_epoch + 1})
        save_checkpoint(self.best_path, state)
        self._write_config()
        self._best_written = self.best_epoch
        self.timings['checkpoint_s'] = self.timings.get('checkpoint_s', 0.0) + \
            time.perf_counter() - t0

    def _result(self, status: str) -> TrainResult:
        return TrainResult(status=status, best_epoch=self.best_epoch,
                           valid=dict(self.best_valid), test=dict(self.best_test),
                           epochs=self.epoch, history=list(self.history),
                           timings=self._timings(),
                           output_dir=str(self.output_dir) if self.output_dir else None,
                           warnings=list(self.warnings),
                           new_epochs=self._session_epochs, model=self.model)

    def _timings(self) -> Dict[str, float]:
        t = dict(self.timings)
        n = len(self.history)
        if n:
            t['mean_epoch_train_s'] = sum(r['train_s'] for r in self.history) / n
            t['mean_epoch_eval_s'] = sum(r['eval_s'] for r in self.history) / n
        return t

    def results(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
        """The content of ``results.json``."""
        out = {
            'status': status,
            'model': getattr(self.model, 'name', '') or type(self.model).__name__,
            'best_epoch': self.best_epoch,
            'valid_metric': self.config.valid_metric,
            'valid': self.best_valid,
            'test': self.best_test,
            'epochs': self.epoch,
            'warnings': self.warnings,
            'config': (to_dict(self.run_config) if self.run_config else
                       {'train': to_dict(self.config)}),
            'data': self.data_spec,
            'dataset': self._dataset_shape(),
            'history': self.history,
            'timings': self._timings(),
            'environment': environment(self.device),
        }
        if self.output_dir is not None:
            out['checkpoints'] = {'best': str(self.best_path),
                                  'last': str(self.last_path)}
        if error is not None:
            out['error'] = error
        return out

    def _write_results(self, status: str, error: Optional[str] = None) -> None:
        if self.results_path is not None:
            write_json(self.results_path, self.results(status, error))
            self._write_config()

    def _close(self, bar=None) -> None:
        if bar is not None:
            bar.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _part_names(parts: Any) -> List[str]:
    if not isinstance(parts, dict) or 'total' not in parts:
        raise TypeError(f"model.loss must return a dict of named 0-dim tensors with "
                        f"'total', got {type(parts).__name__}")
    return ['total'] + [k for k in parts if k != 'total']


@contextlib.contextmanager
def _deterministic(enabled: bool, device: torch.device):
    """``torch.use_deterministic_algorithms(enabled)`` for the block, then restored."""
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled and device.type == 'cuda':
        # cuBLAS needs a fixed workspace for repeatable results
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


@contextlib.contextmanager
def _stop_on_sigterm():
    """Within the block, SIGTERM (``kill``, a batch scheduler's stop) stops training
    the way Ctrl-C does: best weights written and restored, results written. Only in
    the main thread, where Python delivers signals."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise KeyboardInterrupt(f'signal {signum}')

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt(metrics: Dict[str, float]) -> str:
    keys = [k for k in ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20') if k in metrics]
    return ' '.join(f'{k} {metrics[k]:.4f}' for k in keys) or '-'
