r"""Training with BPR triples, Adam, per-epoch validation and early stopping.

The protocol of MMRec (docs/reference.md §1), which the published numbers were
produced with:

* every training interaction once per epoch, shuffled, in batches of :math:`B`, one
  uniform negative per pair (:class:`~mambarec_pyg.data.sampling.TrainingPairs`);
* Adam at ``lr`` (1e-3), no weight decay, the learning rate multiplied by
  :math:`\mathrm{lr\_decay}^{\,e / \mathrm{lr\_decay\_epochs}}` during epoch :math:`e`
  (0.96 and 50: a continuous exponent, updated once per epoch);
* after every epoch the valid split is evaluated (:mod:`~mambarec_pyg.train.evaluate`);
  the run stops once ``valid_metric`` (Recall@20) has not improved for more than
  ``patience`` epochs -- MMRec's rule: the counter resets on a strict improvement and
  the run stops when it *exceeds* ``patience`` -- or after ``max_epochs``;
* the reported test metrics are those of the epoch with the best valid metric (the
  test split is evaluated whenever the valid metric reaches a new best).

Warm-up (``cl_warmup_epochs``, off by default as released): the first epochs pass
``cl_weight=0`` to ``model.loss``. With the released weights the InfoNCE term holds the
BPR loss at ln 2 for the first epochs (docs/reference.md §8); the measurements are
in :attr:`~mambarec_pyg.config.TrainConfig.cl_warmup_epochs`.

Reproducibility: every random draw is seeded from ``seed`` (Python, NumPy, torch, and a
:class:`torch.Generator` for the training pairs), and on the CPU training runs under
``torch.use_deterministic_algorithms`` (``deterministic``), so the same seed gives
bitwise the same run.

Robustness: a ``best.pt`` and a ``last.pt`` checkpoint (model, optimiser, scheduler,
every RNG state, counters, config; :mod:`~mambarec_pyg.train.checkpoint`) are
written atomically after each epoch, so a run resumed from ``last.pt`` ends with
exactly the metrics and weights of an uninterrupted run. Ctrl-C (or SIGTERM) stops at
once (the unfinished epoch is dropped), keeps the checkpoints of the last completed
epoch, puts the best weights back in the model and writes the results so far. A non-finite loss
stops the run with :class:`TrainingDivergedError` naming the epoch, batch and loss
parts, before the optimiser applies it. ``results.json`` records the config,
per-epoch history, best epoch, valid and test metrics, timings and environment.
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

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is a dependency
    tqdm = None

from ..config import Config, ConfigError, TrainConfig, to_dict
from ..data.mmrec import UI
from ..data.sampling import TrainingPairs
from .checkpoint import (environment, load_checkpoint, rng_state, save_checkpoint,
                         seed_everything, set_rng_state, write_json)
from .evaluate import Evaluator, interactive as _interactive, resolve_device

__all__ = ['Trainer', 'TrainResult', 'TrainingDivergedError', 'make_optimizer',
           'LOSS_PARTS']

log = logging.getLogger(__name__)

#: loss parts recorded per epoch (means over the epoch's batches).
LOSS_PARTS = ('total', 'bpr', 'reg', 'cl', 'mmd')
#: TrainConfig fields that may change when a run is resumed.
RESUMABLE_CHANGES = ('max_epochs', 'patience', 'patience_warmup', 'device',
                     'eval_batch_size', 'num_threads', 'deterministic')

Callback = Callable[['Trainer', Dict[str, Any]], None]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, batch and parts."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns (also written to ``results.json``)."""

    #: ``'early_stopped'``, ``'max_epochs'`` or ``'interrupted'``.
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
    #: the trained model (holding the best epoch's weights unless
    #: ``restore_best=False``).
    model: Optional[torch.nn.Module] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != 'model'}


def make_optimizer(parameters, lr: float) -> torch.optim.Optimizer:
    """Adam without weight decay; the fused kernel where the parameters allow it.

    ``fused=True`` is several times faster on a large trainable feature table
    (docs/reference.md §7: 31 ms vs 219 ms per step at Baby scale) and computes the
    same update; it needs floating-point parameters on a device with a fused kernel,
    otherwise the multi-tensor (``foreach``) implementation is used.
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError('the model has no trainable parameters')
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


class Trainer:
    r"""Trains ``model`` on ``data`` under the MMRec protocol.

    Args:
        model: implements ``forward(data) -> (user_emb, item_emb)`` and
            ``loss(users, pos, neg, batch_size=, cl_weight=)`` returning a NamedTuple
            with ``total`` (backpropagated) and optionally ``bpr``, ``reg``, ``cl``,
            ``mmd`` (logged).
        data (HeteroData): the dataset (:func:`mambarec_pyg.load_mmrec` layout). It
            is not modified; a copy is moved to the device once.
        config (TrainConfig or Config): the protocol; with a full :class:`Config`
            the whole of it is recorded in checkpoints and results (needed by
            ``mambarec evaluate`` / ``recommend`` to rebuild the model).
        output_dir: where ``best.pt``, ``last.pt``, ``results.json`` and
            ``train.log`` go; ``None`` keeps everything in memory.
        resume: continue from ``output_dir/last.pt`` when it exists.
        quiet: no progress bars and no per-epoch lines on the console (the log file
            is still written).
        callbacks: called as ``callback(trainer, record)`` after every epoch, once
            its checkpoints are written.
        data_spec: how to load ``data`` again, recorded in checkpoints (by default
            ``config.data`` of a full :class:`Config`).
        restore_best: when :meth:`fit` returns, the model holds the weights of the
            best epoch (else those of the last epoch run).

    The model's initial weights are the caller's: seed before building it (e.g.
    :func:`~mambarec_pyg.train.checkpoint.seed_everything`) for repeatable runs;
    :meth:`fit` seeds everything it consumes itself from ``config.seed``.
    """

    def __init__(self, model: torch.nn.Module, data: HeteroData,
                 config: Union[TrainConfig, Config, None] = None,
                 output_dir: Union[str, Path, None] = None, *, resume: bool = False,
                 quiet: bool = False, callbacks: Sequence[Callback] = (),
                 data_spec: Optional[Dict[str, Any]] = None,
                 restore_best: bool = True) -> None:
        if config is None:
            config = TrainConfig()
        if isinstance(config, Config):
            self.run_config: Optional[Config] = config
            config = config.train
        else:
            self.run_config = None
        if not isinstance(config, TrainConfig):
            raise TypeError(f'config: expected a TrainConfig or Config, got '
                            f'{type(config).__name__}')
        self.config = config
        self.model = model
        self.data = data
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.resume = resume
        self.quiet = quiet
        self.callbacks = list(callbacks)
        if data_spec is None and self.run_config is not None:
            data_spec = to_dict(self.run_config.data)
        self.data_spec = data_spec
        self.restore_best = restore_best
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.device = resolve_device(config.device)

        self.pairs = TrainingPairs(data[UI].edge_index, int(data['item'].num_nodes))
        self.evaluator = Evaluator(data, ks=config.topk,
                                   batch_size=config.eval_batch_size,
                                   device=self.device)
        self.generator = torch.Generator()
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scheduler = None
        # run state
        self.epoch = 0  # epochs completed
        self.best_epoch = -1
        self.best_value = -math.inf
        self.best_valid: Dict[str, float] = {}
        self.best_test: Dict[str, float] = {}
        self.bad_epochs = 0
        self.history: List[Dict[str, Any]] = []
        self.timings = {'train_s': 0.0, 'eval_s': 0.0, 'total_s': 0.0}
        self._log_file = None

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
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.model.to(self.device)
        # A shallow copy, so moving tensors does not touch the caller's object.
        self.data_on_device = self.data if self.device.type == 'cpu' else (
            self.data.__copy__().to(self.device))
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr)
        decay, every = cfg.lr_decay, cfg.lr_decay_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: decay**(e / every))
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.output_dir / 'train.log', 'a')
        state = None
        if self.resume and self.last_path is not None and self.last_path.is_file():
            state = load_checkpoint(self.last_path)
        if state is not None:
            try:
                self._restore(state)
            except BaseException:
                self._close(_NoBar())
                raise
            self._log(f'resumed from {self.last_path} after epoch {self.epoch - 1} '
                      f'(best {cfg.valid_metric} {self.best_value:.4f} at epoch '
                      f'{self.best_epoch})')
        else:
            if self.resume:
                self._log(f'no checkpoint in {self.output_dir}; starting a new run')
            seed_everything(cfg.seed)
            self.generator.manual_seed(cfg.seed)
            self._log(f'training on {self.device} ({torch.get_num_threads()} threads): '
                      f'{self.pairs.num_pairs:,} training pairs, '
                      f'{self.pairs.num_batches(cfg.batch_size)} batches of '
                      f'{cfg.batch_size}, optimiser '
                      f"Adam{' (fused)' if self._fused() else ''}")

    def _fused(self) -> bool:
        return bool(self.optimizer.defaults.get('fused'))

    def _restore(self, state: Dict[str, Any]) -> None:
        saved = state.get('train_config') or {}
        diffs = [f'{k}: {saved[k]!r} -> {v!r}'
                 for k, v in to_dict(self.config).items()
                 if k in saved and k not in RESUMABLE_CHANGES and saved[k] != v]
        if diffs:
            raise ConfigError(f'{self.last_path}: cannot resume with a different '
                              f"protocol ({'; '.join(diffs)}); use the checkpoint's "
                              f'settings or start a new run')
        self.model.load_state_dict(state['model'])
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
        self.timings = dict(state.get('timings', self.timings))

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to continue the run (the checkpoint's content)."""
        return {
            'model': self.model.state_dict(),
            'model_class': f'{type(self.model).__module__}.{type(self.model).__name__}',
            'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict(),
            'rng': rng_state(self.generator),
            'epoch': self.epoch,
            'best_epoch': self.best_epoch,
            'best_value': self.best_value,
            'best_valid': self.best_valid,
            'best_test': self.best_test,
            'bad_epochs': self.bad_epochs,
            'history': self.history,
            'timings': self.timings,
            'train_config': to_dict(self.config),
            'config': to_dict(self.run_config) if self.run_config else None,
            'data': self.data_spec,
        }

    # -- logging ----------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        log.info(msg)
        if self._log_file is not None:
            self._log_file.write(time.strftime('%Y-%m-%d %H:%M:%S ') + msg + '\n')
            self._log_file.flush()
        if not self.quiet:
            if tqdm is not None:
                tqdm.write(msg)
            else:  # pragma: no cover
                print(msg, flush=True)

    def _bar(self, **kwargs):
        # Progress bars only where someone watches: a terminal or a notebook (not a
        # log file, where the epoch lines say the same).
        if tqdm is None or self.quiet or not _interactive():
            return _NoBar()
        return tqdm(dynamic_ncols=True, **kwargs)

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train until early stopping, ``max_epochs`` or Ctrl-C; see the module doc."""
        cfg = self.config
        deterministic = cfg.deterministic
        if deterministic is None:
            deterministic = self.device.type == 'cpu'
        with _deterministic(deterministic, self.device), _stop_on_sigterm():
            return self._fit()

    def _fit(self) -> TrainResult:
        self._setup()
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
                self.timings['total_s'] = total_before + time.perf_counter() - start
                self._save(record['best'])
                epochs_bar.update(1)
                epochs_bar.set_postfix({cfg.valid_metric: record['valid'][
                    cfg.valid_metric], 'best': self.best_value})
                for cb in self.callbacks:
                    cb(self, record)
            else:
                if self.bad_epochs > cfg.patience:
                    status = 'early_stopped'
        except KeyboardInterrupt:
            status = 'interrupted'
            self._log(f'interrupted during epoch {self.epoch}; the checkpoints of epoch '
                      f'{self.epoch - 1} are kept'
                      + (' (resume with resume=True / --resume)'
                         if self.output_dir else ''))
        except TrainingDivergedError as e:
            self.timings['total_s'] = total_before + time.perf_counter() - start
            self._log(str(e))
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
        result = self._result(status)
        self._write_results(status)
        if self.restore_best:
            self.load_best()
        if self.best_epoch >= 0:
            self._log(f'best epoch {self.best_epoch}: valid {_fmt(self.best_valid)} | '
                      f'test {_fmt(self.best_test)}')
        self._close(epochs_bar)
        return result

    def _run_epoch(self, epoch: int) -> Dict[str, Any]:
        cfg = self.config
        model, opt = self.model, self.optimizer
        cl_weight = 0.0 if epoch < cfg.cl_warmup_epochs else None
        lr = opt.param_groups[0]['lr']
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(len(LOSS_PARTS), dtype=torch.float64, device=self.device)
        num_batches = self.pairs.num_batches(cfg.batch_size)
        bar = self._bar(total=num_batches, desc=f'epoch {epoch}', unit='batch',
                        leave=False)
        try:
            for b, batch in enumerate(
                    self.pairs.epoch(cfg.batch_size, self.generator, self.device)):
                parts = model.loss(batch.users, batch.pos, batch.neg,
                                   batch_size=cfg.batch_size, cl_weight=cl_weight)
                values = self._parts(parts)
                if not bool(torch.isfinite(values[0])):
                    raise TrainingDivergedError(self._diverged_message(
                        epoch, b, num_batches, values))
                opt.zero_grad(set_to_none=True)
                parts.total.backward()
                opt.step()
                sums += values
                bar.update(1)
        finally:
            bar.close()
        self.scheduler.step()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        train_s = time.perf_counter() - t0
        means = (sums / max(num_batches, 1)).tolist()
        losses = dict(zip(LOSS_PARTS, means))

        t1 = time.perf_counter()
        valid = self.evaluator(model, 'valid', self.data_on_device)
        value = valid[cfg.valid_metric]
        best = value > self.best_value
        test = None
        if best:
            test = self.evaluator(model, 'test', self.data_on_device)
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
        record = {'epoch': epoch, 'lr': lr, 'cl_weight': cl_weight, **losses,
                  'train_s': train_s, 'eval_s': eval_s, 'valid': valid,
                  'best': best}
        if test is not None:
            record['test'] = test
        self.history.append(record)
        warm = ' (InfoNCE off: warm-up)' if cl_weight == 0.0 else ''
        self._log(f'epoch {epoch:4d} | train {train_s:6.1f}s | loss {losses["total"]:.4f}'
                  f' (bpr {losses["bpr"]:.4f} reg {losses["reg"]:.2e} cl '
                  f'{losses["cl"]:.4f} mmd {losses["mmd"]:.4f}){warm} | eval '
                  f'{eval_s:5.1f}s | valid {cfg.valid_metric} {value:.4f}'
                  + (' *' if best else f' (no improvement for {self.bad_epochs})'))
        return record

    def _parts(self, parts: Any) -> torch.Tensor:
        """The loss parts as one float64 vector, ``nan`` for parts the model lacks."""
        if isinstance(parts, torch.Tensor):
            raise TypeError('model.loss must return a NamedTuple with a `total` field '
                            '(and bpr, reg, cl, mmd), got a bare tensor')
        nan = torch.tensor(math.nan, dtype=torch.float64, device=self.device)
        vals = []
        for name in LOSS_PARTS:
            v = getattr(parts, name, None)
            vals.append(nan if v is None else v.detach().to(torch.float64).reshape(()))
        return torch.stack(vals)

    def _diverged_message(self, epoch: int, batch: int, num_batches: int,
                          values: torch.Tensor) -> str:
        parts = ', '.join(f'{n}={v:.6g}' for n, v in zip(LOSS_PARTS, values.tolist()))
        where = (f'the last good checkpoint ({self.last_path}, after epoch '
                 f'{self.epoch - 1}) is kept' if self.last_path and self.epoch > 0
                 else 'no epoch had completed')
        return (f'non-finite loss at epoch {epoch}, batch {batch + 1} of {num_batches}: '
                f'{parts}; the step was not applied and training stopped; {where}. '
                f'Lower the learning rate or check the data for extreme feature '
                f'values.')

    def load_best(self) -> bool:
        """Put the best epoch's weights into the model (from memory or ``best.pt``)."""
        state = self.best_state
        if state is None and self.best_path is not None and self.best_path.is_file():
            state = load_checkpoint(self.best_path)['model']
        if state is None:
            return False
        self.model.load_state_dict(state)
        return True

    # -- outputs ----------------------------------------------------------------------
    def _save(self, best: bool) -> None:
        if self.output_dir is None:
            return
        state = self.state_dict()
        if best:
            save_checkpoint(self.best_path, state)
        save_checkpoint(self.last_path, state)
        self._write_results('running')

    def _result(self, status: str) -> TrainResult:
        return TrainResult(status=status, best_epoch=self.best_epoch,
                           valid=dict(self.best_valid), test=dict(self.best_test),
                           epochs=self.epoch, history=list(self.history),
                           timings=self._timings(),
                           output_dir=str(self.output_dir) if self.output_dir else None,
                           model=self.model)

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
            'best_epoch': self.best_epoch,
            'valid_metric': self.config.valid_metric,
            'valid': self.best_valid,
            'test': self.best_test,
            'epochs': self.epoch,
            'config': (to_dict(self.run_config) if self.run_config else
                       {'train': to_dict(self.config)}),
            'data': self.data_spec,
            'dataset': {'name': str(getattr(self.data, 'name', '')),
                        'num_users': int(self.data['user'].num_nodes),
                        'num_items': int(self.data['item'].num_nodes),
                        'num_train_interactions': self.pairs.num_pairs},
            'model_class': f'{type(self.model).__module__}.{type(self.model).__name__}',
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

    def _close(self, bar) -> None:
        bar.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


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
    the way Ctrl-C does: checkpoints kept, results written, best weights restored.
    Only in the main thread, where Python delivers signals."""
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


class _NoBar:
    def update(self, *args, **kwargs) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _fmt(metrics: Dict[str, float]) -> str:
    keys = [k for k in ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20') if k in metrics]
    return ' '.join(f'{k} {metrics[k]:.4f}' for k in keys)
