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
weights are put back in the model. A run directory belongs to one process at a time
(:class:`~mambarec_pyg.train.rundir.RunLock`).

Divergence. No epoch with non-finite weights is ever evaluated, selected or saved:

* a non-finite loss stops the run with :class:`TrainingDivergedError` naming the
  epoch, batch and loss parts (on the CPU before the optimiser applies it; on a GPU,
  where checking every step would stall the device, within 16 steps);
* after the steps of every epoch, before it is evaluated, the weights (the model's
  ``state_dict``) are checked with one fused reduction
  (:func:`~mambarec_pyg.train.checkpoint.first_nonfinite`; one synchronisation per
  epoch on a GPU); an update that overflowed while the loss stayed finite stops the
  run with :class:`TrainingDivergedError` naming the epoch and the first non-finite
  tensor.

Either way ``last.pt`` is not written again (it holds the last checkpointed epoch),
``best.pt`` gets the best epoch so far, ``results.json`` records status
``'diverged'`` (if an epoch completed), the best weights are put back in the model,
and the message ends with what the directory holds (only files that exist, with
their epochs).
``results.json`` records the config, per-epoch history, best epoch, valid and test
metrics, timings, environment and any warnings (:meth:`Recommender.diagnose
<mambarec_pyg.models.Recommender.diagnose>`).

The parts. :class:`Trainer` is the loop -- epochs, the steps of an epoch, evaluation
and early stopping -- and hands the rest to parts that own their state:

* :class:`~mambarec_pyg.train.state.RunState` (``trainer.state``) -- counters, best
  epoch, history, timings, warnings and random states, with ``state_dict()``;
* :class:`~mambarec_pyg.train.recorder.RunRecorder` (``trainer.recorder``) -- the run
  directory's files, its lock and the messages; ``is_writer=False`` silences it;
* :mod:`~mambarec_pyg.train.rundir` -- the one rule for what may change on resume and
  what a finished run is;
* :class:`~mambarec_pyg.train.step.TrainingStep` (``trainer.step``, built after the
  optimiser by ``step_factory``) -- forward, update and the logged values' reduction;
* :mod:`~mambarec_pyg.train.process` -- deterministic algorithms and SIGTERM for the
  run's duration.

A subclass or a data-parallel wrapper changes one thing each: :meth:`Trainer.build_step`
(the step), :meth:`Trainer.should_stop` (the early-stopping decision, computed in that
one method), :meth:`Trainer.evaluate_epoch` (who evaluates).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch_geometric.data import HeteroData

from ..config import Config, ConfigError, TrainConfig, to_dict
from ..data.fingerprint import data_fingerprint
from ..data.index import training_index
from ..data.sampling import TrainingPairs
from ..errors import CheckpointError, NonFiniteError, TrainingDivergedError
from ..utils import eval_view, resolve_device
from .checkpoint import first_nonfinite, load_checkpoint
from .evaluate import Evaluator, check_finite_embeddings
from .process import deterministic_algorithms, stop_on_sigterm, thread_policy_note
from .recorder import RunRecorder
from .rundir import check_resume
from .state import RunState
from .step import TrainingStep

__all__ = ['Trainer', 'TrainResult', 'TrainingDivergedError', 'make_optimizer',
           'resolve_protocol']

Callback = Callable[['Trainer', Dict[str, Any]], None]
#: ``factory(model, optimizer)``: the optimisation step of a run.
StepFactory = Callable[[torch.nn.Module, torch.optim.Optimizer], TrainingStep]

# Steps between finiteness checks of the loss on a GPU (each check synchronises).
_CUDA_CHECK_EVERY = 16


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


def _from_state(name: str) -> property:
    return property(lambda self: getattr(self.state, name),
                    doc=f'``state.{name}`` (:class:`~mambarec_pyg.train.state.RunState`).')


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
            options in :data:`~mambarec_pyg.train.rundir.RESUMABLE_CHANGES` may
            differ from the checkpoint's, and the data must have its fingerprint
            (:mod:`~mambarec_pyg.data.fingerprint`); any other difference stops with
            :class:`~mambarec_pyg.config.ConfigError` before anything is written.
            Without ``resume`` (or without a ``last.pt``) a new run starts; an
            earlier run's files in ``output_dir`` stay as they are until it writes
            its first checkpoint or results, which replace them all
            (:class:`~mambarec_pyg.train.recorder.RunRecorder`).
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
        step_factory: ``factory(model, optimizer)`` builds the optimisation step
            once the optimiser exists (default
            :class:`~mambarec_pyg.train.step.TrainingStep`; see :meth:`build_step`).
        is_writer: ``False``: this process writes no file and prints nothing (it
            still reads ``last.pt`` to resume) -- the processes of a data-parallel
            run other than rank 0.

    The model's initial weights are the caller's: seed before building it (e.g.
    :func:`~mambarec_pyg.utils.seed_everything`) for repeatable runs; :meth:`fit`
    seeds everything it consumes itself from ``config.seed``.

    Attributes:
        state (RunState): what the run remembers (epochs, best epoch, history, ...).
        recorder (RunRecorder): the run directory and the messages.
        step (TrainingStep): the optimisation step (built by :meth:`fit`).
    """

    def __init__(self, model: torch.nn.Module, data: HeteroData,
                 config: Union[TrainConfig, Config, None] = None,
                 output_dir: Union[str, Path, None] = None, *, resume: bool = False,
                 quiet: bool = False, callbacks: Sequence[Callback] = (),
                 data_spec: Optional[Dict[str, Any]] = None,
                 restore_best: bool = True,
                 allow_no_valid: Optional[bool] = None,
                 step_factory: Optional[StepFactory] = None,
                 is_writer: bool = True) -> None:
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
        self.resume = resume
        self.quiet = quiet
        self.callbacks = list(callbacks)
        if data_spec is None and self.run_config is not None:
            from ..data.dataset import data_spec as _spec
            data_spec = _spec(self.run_config.data, data)
        if allow_no_valid is None:
            allow_no_valid = bool(run_config is not None and
                                  run_config.data.allow_no_valid)
        self.restore_best = restore_best
        self.device = resolve_device(self.config.device)

        self.index = training_index(data)
        self.evaluator = Evaluator(data, ks=self.config.topk,
                                   batch_size=self.config.eval_batch_size,
                                   device=self.device,
                                   item_block=self.config.eval_item_block,
                                   sample={'valid': self.config.valid_users},
                                   sample_seed=self.config.seed)
        self.has_valid = self.evaluator.has_split('valid')
        if not self.has_valid and not allow_no_valid:
            name = getattr(data, 'name', None) or 'the dataset'
            raise ConfigError(
                f'{name} has no validation interactions (x_label 1), so no epoch can '
                f'be selected and early stopping cannot work; add a validation split '
                f'or train without one with --data.allow-no-valid true (the last '
                f'epoch is then reported)')
        self.has_test = self.evaluator.has_split('test')
        self.state = RunState()
        self.recorder = RunRecorder(
            output_dir, config=self.config, run_config=self.run_config,
            model_name=getattr(model, 'name', '') or type(model).__name__,
            data_spec=data_spec, dataset=self._dataset_shape(), device=self.device,
            quiet=quiet, is_writer=is_writer,
            fingerprint=lambda: data_fingerprint(self.data))
        self.step_factory: StepFactory = step_factory or TrainingStep
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        self.pairs: Optional[TrainingPairs] = None
        #: the optimisation step (:class:`~mambarec_pyg.train.step.TrainingStep`;
        #: built by :meth:`build_step` with the optimiser when ``None``).
        self.step: Optional[TrainingStep] = None
        self._session_epochs = 0

    # -- views for callbacks ------------------------------------------------------------
    epoch = _from_state('epoch')
    best_epoch = _from_state('best_epoch')
    best_value = _from_state('best_value')
    best_valid = _from_state('best_valid')
    best_test = _from_state('best_test')
    history = _from_state('history')
    warnings = _from_state('warnings')
    generator = _from_state('generator')

    @property
    def output_dir(self) -> Optional[Path]:
        return self.recorder.output_dir

    @property
    def best_path(self) -> Optional[Path]:
        return self.recorder.best_path

    @property
    def last_path(self) -> Optional[Path]:
        return self.recorder.last_path

    @property
    def results_path(self) -> Optional[Path]:
        return self.recorder.results_path

    # -- set-up -----------------------------------------------------------------------
    def _setup(self) -> None:
        cfg = self.config
        checkpoint = self._resume_checkpoint()  # checked before anything on disk changes
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
            if self.step is None:
                self.step = self.build_step()
        # a new run leaves an earlier run's files until it writes its own (rundir)
        self.recorder.open(resumed=checkpoint is not None, keep_log=self.resume)
        if checkpoint is not None:
            self.load_state_dict(checkpoint)
            self._log(f'resumed from {self.last_path} after epoch '
                      f'{self.state.epoch - 1} (best {cfg.valid_metric} '
                      f'{self.state.best_value:.4f} at epoch {self.state.best_epoch})')
        else:
            if self.resume:
                self._log(f'no checkpoint in {self.output_dir}; starting a new run')
            self.state.seed(cfg.seed)
            self._log(self._start_message())
        note = thread_policy_note(self.device)
        if note:
            self._log(note)
        # last.pt and best.pt hold what was restored (nothing for a new run)
        self.recorder.load_state_dict({'last_epoch': self.state.epoch,
                                       'best_epoch': self.state.best_epoch})

    def _start_message(self) -> str:
        cfg = self.config
        name = self.recorder.model_name
        if self.pairs is None:
            return f'{name} has nothing to train; evaluating it once'
        fused = ' (fused)' if self.optimizer.defaults.get('fused') else ''
        return (f'training {name} on {self.device} ({torch.get_num_threads()} threads): '
                f'{self.pairs.num_pairs:,} training pairs, '
                f'{self.pairs.num_batches(cfg.batch_size)} batches of {cfg.batch_size}, '
                f'optimiser Adam{fused}, lr {cfg.lr:g}, weight decay '
                f'{cfg.weight_decay:g}, lr decay {cfg.lr_decay:g} per '
                f'{cfg.lr_decay_epochs:g} epochs')

    def build_step(self) -> TrainingStep:
        """The optimisation step, built once the optimiser exists:
        ``step_factory(model, optimizer)``. Override (or pass ``step_factory``) for
        another way to compute a step, such as a data-parallel one."""
        return self.step_factory(self.model, self.optimizer)

    def _resume_checkpoint(self) -> Optional[Dict[str, Any]]:
        """``last.pt`` when resuming and it exists, checked against this run's
        settings (:func:`~mambarec_pyg.train.rundir.check_resume`)."""
        path = self.last_path
        if not (self.resume and path is not None and path.is_file()):
            return None
        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as e:
            raise CheckpointError(f'{e}; a run cannot be resumed from it: start a new '
                                  f'run (--overwrite or another --output)') from None
        recorded = checkpoint.get('data_fingerprint')
        check_resume(path, checkpoint,
                     config=self.run_config.to_dict() if self.run_config else None,
                     train=to_dict(self.config), dataset=self.recorder.dataset,
                     model_name=getattr(self.model, 'name', None),
                     fingerprint=self.recorder.fingerprint() if recorded else None)
        bad = first_nonfinite((checkpoint.get('model') or {}).items())
        if bad is not None:
            raise CheckpointError(f'{path}: the weights are not finite (tensor '
                                  f'{bad.describe()}); a run cannot be resumed from '
                                  f'it: start a new run (--overwrite or another '
                                  f'--output)')
        return checkpoint

    def _dataset_shape(self) -> Dict[str, Any]:
        return {'name': str(getattr(self.data, 'name', '')),
                'num_users': int(self.data['user'].num_nodes),
                'num_items': int(self.data['item'].num_nodes),
                'num_train_interactions': self.index.num_pairs}

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run (the content of ``last.pt``): the
        run's config and data, the model, optimiser and scheduler, and the
        :class:`~mambarec_pyg.train.state.RunState`."""
        return {**self.recorder.header(), 'kind': 'last',
                'model': self.model.state_dict(),
                'optimizer': self.optimizer.state_dict() if self.optimizer else None,
                'scheduler': self.scheduler.state_dict() if self.scheduler else None,
                **self.state.state_dict()}

    def load_state_dict(self, checkpoint: Dict[str, Any]) -> None:
        """Continue from what :meth:`state_dict` returned (a ``last.pt``); the
        optimiser must exist (:meth:`fit` builds it)."""
        try:
            self.model.load_state_dict(checkpoint['model'])
        except RuntimeError as e:
            raise ConfigError(f'{self.last_path}: the checkpoint does not fit this '
                              f'model ({str(e).splitlines()[0]})') from None
        if self.optimizer is not None:
            self.optimizer.load_state_dict(checkpoint['optimizer'])
            self.scheduler.load_state_dict(checkpoint['scheduler'])
        self.state.load_state_dict(checkpoint, device=self.device)

    def load_best(self) -> bool:
        """Put the best epoch's weights into the model (from memory or ``best.pt``)."""
        weights = self.state.best_weights
        path = self.best_path
        if weights is None and path is not None and self.recorder.best_epoch >= 0 \
                and path.is_file():  # not an earlier run's best.pt
            weights = load_checkpoint(path)['model']
        if weights is None:
            return False
        self.model.load_state_dict(weights)
        return True

    def results(self, status: str, error: Optional[str] = None) -> Dict[str, Any]:
        """The content of ``results.json``."""
        return self.recorder.results(status, self.state, error)

    def _log(self, msg: str) -> None:
        self.recorder.log(msg)

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until early stopping, ``max_epochs`` or Ctrl-C; see the module doc.

        However it ends (also with an error), the model is left in eval mode
        (``model.training`` is ``False``), ready to evaluate and serve; call
        ``model.train()`` before training it further by hand.
        """
        deterministic = self.config.deterministic
        if deterministic is None:
            deterministic = self.device.type == 'cpu'
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(self.recorder.lock())
                stack.enter_context(deterministic_algorithms(deterministic,
                                                             self.device))
                stack.enter_context(stop_on_sigterm())
                return self._fit()
        finally:
            self.model.eval()

    def should_stop(self) -> bool:
        """Early stopping (MMRec's rule): more than ``patience`` epochs without a
        strict improvement. The decision is made here alone, so a data-parallel
        trainer makes every process agree on it in this one method."""
        return self.state.bad_epochs > self.config.patience

    def _fit(self) -> TrainResult:
        try:
            self._setup()
        except BaseException:
            self.recorder.close()
            raise
        if self.optimizer is None:
            return self._evaluate_only()
        cfg, state = self.config, self.state
        status = 'max_epochs'
        start = time.perf_counter()
        total_before = state.timings.get('total_s', 0.0)
        epochs_bar = self.recorder.bar(total=cfg.max_epochs, initial=state.epoch,
                                       desc='epochs', unit='epoch')
        try:
            while state.epoch < cfg.max_epochs:
                if self.should_stop():
                    status = 'early_stopped'
                    break
                record = self._run_epoch(state.epoch)
                state.epoch += 1
                self._session_epochs += 1
                state.timings['total_s'] = total_before + time.perf_counter() - start
                self._maybe_checkpoint()
                epochs_bar.update(1)
                epochs_bar.set_postfix({cfg.valid_metric: record['valid'].get(
                    cfg.valid_metric, float('nan')), 'best': state.best_value})
                for cb in self.callbacks:
                    cb(self, record)
            else:
                if self.should_stop():
                    status = 'early_stopped'
        except KeyboardInterrupt:
            epochs_bar.close()
            return self._interrupted(total_before, start)
        except TrainingDivergedError as e:
            state.timings['total_s'] = total_before + time.perf_counter() - start
            recorder = self.recorder
            # the best epoch so far was checked when it completed: finite
            recorder.write_best(state)
            with_results = state.epoch > 0 and recorder.writes
            message = f'{e} On disk: {recorder.on_disk(results=with_results)}.'
            if with_results:
                recorder.write_results('diverged', state, error=message)
            self._log(message)
            if self.restore_best:
                self.load_best()
            self._close(epochs_bar)
            raise TrainingDivergedError(message) from None
        except BaseException:
            self._close(epochs_bar)
            raise
        state.timings['total_s'] = total_before + time.perf_counter() - start
        if status == 'early_stopped':
            self._log(f'early stopping: {cfg.valid_metric} has not improved for '
                      f'{state.bad_epochs} epochs (patience {cfg.patience})')
        self._finish(status)
        self._close(epochs_bar)
        return self._result(status)

    def _run_epoch(self, epoch: int) -> Dict[str, Any]:
        """One epoch: train, evaluate, record and report it."""
        cfg, model = self.config, self.model
        extra = model.on_epoch_start(epoch) if hasattr(model, 'on_epoch_start') else None
        lr = self.optimizer.param_groups[0]['lr']
        t0 = time.perf_counter()
        losses = self._train_epoch(epoch)
        self._check_weights(epoch)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        try:
            valid, test, value = self.evaluate_epoch(epoch)
        except NonFiniteError as e:  # finite weights whose embeddings overflow
            raise TrainingDivergedError(self._embeddings_diverged(epoch, e)) from None
        eval_s = time.perf_counter() - t1
        best = test is not None
        self.state.timings['train_s'] += train_s
        self.state.timings['eval_s'] += eval_s
        record: Dict[str, Any] = {'epoch': epoch, 'lr': lr, **(extra or {}),
                                  'loss': losses, 'train_s': train_s, 'eval_s': eval_s,
                                  'valid': valid, 'best': best}
        if test is not None:
            record['test'] = test
        self.state.history.append(record)
        shown = ' '.join(f'{k} {v:.4g}' for k, v in losses.items() if k != 'total')
        extras = ''.join(f' {k}={v}' for k, v in (extra or {}).items())
        metric = (f'valid {cfg.valid_metric} {value:.4f}' if self.has_valid else
                  'no valid split')
        self._log(f'epoch {epoch:4d} | train {train_s:6.1f}s | loss '
                  f'{losses.get("total", float("nan")):.4f} ({shown}){extras} | eval '
                  f'{eval_s:5.1f}s | {metric}'
                  + (' *' if best else
                     f' (no improvement for {self.state.bad_epochs})'))
        return record

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        """The steps of one epoch; the mean of each loss part over its batches."""
        cfg, step = self.config, self.step
        self.model.train()
        num_batches = self.pairs.num_batches(cfg.batch_size)
        names: Optional[List[str]] = None
        sums = None
        recent: List[torch.Tensor] = []
        check_every = 1 if self.device.type == 'cpu' else _CUDA_CHECK_EVERY
        bar = self.recorder.bar(total=num_batches, desc=f'epoch {epoch}',
                                unit='batch', leave=False)
        try:
            for b, batch in enumerate(self.pairs.epoch(cfg.batch_size,
                                                       self.state.generator,
                                                       self.device)):
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
        if sums is None:
            return {}
        return dict(zip(names, (step.reduce(sums) / max(num_batches, 1)).tolist()))

    def evaluate_epoch(self, epoch: int
                       ) -> Tuple[Dict[str, float], Optional[Dict[str, float]], float]:
        """Evaluate after ``epoch`` and count it for early stopping:
        ``(valid metrics, test metrics or None, the selection value)``.

        The test split is evaluated only when the valid metric reached a new best
        (``test`` is then not ``None``), which resets the patience counter; otherwise
        the counter grows, once ``patience_warmup`` epochs have passed. Without a
        valid split every epoch is the newest best.
        """
        cfg, state, model = self.config, self.state, self.model
        valid = self.evaluator(model, 'valid') if self.has_valid else {}
        value = valid.get(cfg.valid_metric, 0.0) if self.has_valid else float(epoch)
        test = None
        if value > state.best_value:
            test = self.evaluator(model, 'test') if self.has_test else {}
            state.set_best(epoch, value, valid, test, model)
            state.bad_epochs = 0
        elif epoch >= cfg.patience_warmup:
            state.bad_epochs += 1
        return valid, test, value

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
        step = ('the step was not applied' if applied == 0 else
                f'{applied} step(s) were applied before the check on the GPU')
        return (f'non-finite loss at epoch {epoch}, batch {batch + 1} of {num_batches}: '
                f'{parts}; {step} and training stopped. Lower the learning rate or '
                f'check the data for extreme feature values.')

    def _check_weights(self, epoch: int) -> None:
        """Stop (:class:`TrainingDivergedError`) if the weights after the steps of
        ``epoch`` are not all finite, before the epoch is evaluated or saved. (Finite
        weights can still give non-finite embeddings: the evaluation refuses those,
        and when there is no split to evaluate they are checked here.)"""
        bad = first_nonfinite(self.model.state_dict().items())
        if bad is None:
            if not (self.has_valid or self.has_test):
                view = eval_view(self.model)
                embed = getattr(view, 'embed', None)
                with torch.no_grad():
                    try:
                        check_finite_embeddings(*(embed() if callable(embed) else
                                                  view()))
                    except NonFiniteError as e:
                        raise TrainingDivergedError(
                            self._embeddings_diverged(epoch, e)) from None
            return
        kind = ('parameter' if bad.name in dict(self.model.named_parameters()) else
                'buffer')
        raise TrainingDivergedError(
            f'non-finite weights after the training steps of epoch {epoch}: {kind} '
            f'{bad.describe()} (the loss stayed finite); training '
            f'stopped before the epoch was evaluated or saved. Lower the learning '
            f'rate or check the data for extreme feature values.')

    def _embeddings_diverged(self, epoch: int, error: NonFiniteError) -> str:
        """The message for finite weights whose embeddings are not finite."""
        largest = max(((float(t.detach().abs().max()), name) for name, t in
                       self.model.state_dict().items()
                       if t.is_floating_point() and t.numel()), default=None)
        where = (f' (the largest weight: {largest[0]:.3g} in {largest[1]!r})'
                 if largest is not None else '')
        return (f'non-finite embeddings after the training steps of epoch {epoch}: '
                f'{error}{where}; training stopped before the epoch was evaluated or '
                f'saved. Lower the learning rate or check the data for extreme '
                f'feature values.')

    # -- endings ------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        recorder = self.recorder
        if recorder.writes and recorder.due():
            recorder.write_last(self.state, self.state_dict)
            recorder.write_best(self.state)
            recorder.write_results('running', self.state)

    def _evaluate_only(self) -> TrainResult:
        """A model with nothing to train: evaluate once as epoch 0."""
        state = self.state
        t0 = time.perf_counter()
        valid = self.evaluator(self.model, 'valid') if self.has_valid else {}
        test = self.evaluator(self.model, 'test') if self.has_test else {}
        eval_s = time.perf_counter() - t0
        state.epoch = 1
        state.set_best(0, valid.get(self.config.valid_metric, -math.inf), valid, test,
                       self.model)
        state.history = [{'epoch': 0, 'loss': {}, 'train_s': 0.0, 'eval_s': eval_s,
                          'valid': valid, 'test': test, 'best': True}]
        state.timings['eval_s'] = eval_s
        state.timings['total_s'] = eval_s
        state.add_warnings(self._split_warnings())
        self._log(f'valid {_fmt(valid)} | test {_fmt(test)}')
        self.recorder.write_best(state)
        self.recorder.write_results('evaluated', state)
        self._close()
        return self._result('evaluated')

    def _interrupted(self, total_before: float, start: float) -> TrainResult:
        state = self.state
        state.timings['total_s'] = total_before + time.perf_counter() - start
        if self._session_epochs == 0:
            self._log(f'interrupted during epoch {state.epoch} before it completed; '
                      f'nothing was written'
                      + (f' (the checkpoints of epoch {state.epoch - 1} are kept)'
                         if state.epoch > 0 and self.output_dir else ''))
            if self.restore_best:
                self.load_best()
            self._close()
            return self._result('interrupted')
        resume_from = self.recorder.last_epoch - 1
        self.recorder.write_best(state)
        self.recorder.write_results('interrupted', state)
        self._log(f'interrupted during epoch {state.epoch}; '
                  + (f'resume continues after epoch {resume_from} (last.pt)'
                     if self.output_dir and resume_from >= 0 else
                     'no last.pt was written yet' if self.output_dir else
                     'nothing is saved (no output directory)')
                  + (f'; best.pt holds epoch {state.best_epoch}'
                     if self.output_dir and state.best_epoch >= 0 else ''))
        if self.restore_best:
            self.load_best()
        self._close()
        return self._result('interrupted')

    def _finish(self, status: str) -> None:
        state = self.state
        state.add_warnings(self._split_warnings() + list(self._diagnose()))
        for w in state.warnings:
            self._log(f'warning: {w}')
        self.recorder.write_last(state, self.state_dict)
        self.recorder.write_best(state)
        self.recorder.write_results(status, state)
        if self.restore_best:
            self.load_best()
        if state.best_epoch >= 0:
            self._log(f'best epoch {state.best_epoch}: valid {_fmt(state.best_valid)} | '
                      f'test {_fmt(state.best_test)}')

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
        return diagnose(self.state.history) if callable(diagnose) else []

    def _result(self, status: str) -> TrainResult:
        state = self.state
        return TrainResult(status=status, best_epoch=state.best_epoch,
                           valid=dict(state.best_valid), test=dict(state.best_test),
                           epochs=state.epoch, history=list(state.history),
                           timings=state.timing_summary(),
                           output_dir=str(self.output_dir) if self.output_dir else None,
                           warnings=list(state.warnings),
                           new_epochs=self._session_epochs, model=self.model)

    def _close(self, bar=None) -> None:
        if bar is not None:
            bar.close()
        self.recorder.close()


def _part_names(parts: Any) -> List[str]:
    if not isinstance(parts, dict) or 'total' not in parts:
        raise TypeError(f"model.loss must return a dict of named 0-dim tensors with "
                        f"'total', got {type(parts).__name__}")
    return ['total'] + [k for k in parts if k != 'total']


def _fmt(metrics: Dict[str, float]) -> str:
    keys = [k for k in ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20') if k in metrics]
    return ' '.join(f'{k} {metrics[k]:.4f}' for k in keys) or '-'
