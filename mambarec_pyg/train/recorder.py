"""The run recorder: a training run's directory, its files and its messages.

:class:`RunRecorder` writes what a run leaves on disk (their meaning, and which run a
directory holds, is :mod:`~mambarec_pyg.train.rundir`'s contract):

* ``last.pt`` -- everything needed to resume, at most once per
  ``checkpoint_interval_s`` seconds (:meth:`~RunRecorder.due`) and at the end;
* ``best.pt`` -- the best epoch's weights and config, whenever the best epoch changed
  since it was last written;
* ``results.json`` -- the run's record (:meth:`~RunRecorder.results`);
* ``config.yaml`` -- the run's whole config, with its first checkpoint or results (so
  a run stopped before then leaves an earlier run's files as they were);
* ``metrics.csv``, ``metrics.jsonl`` -- every epoch's metrics and loss parts
  (:mod:`~mambarec_pyg.train.tracking`), with every ``last.pt`` and ``results.json``;
* ``train.log`` -- every message, time-stamped (they also go to the console unless
  ``quiet``, and to :mod:`logging`);

and holds the directory's lock while the run writes (:meth:`~RunRecorder.lock`).
Checkpoints and results are written atomically (a temporary file, then a rename).
Every checkpoint records the data's fingerprint
(:func:`~mambarec_pyg.data.fingerprint.data_fingerprint`) with the run's config.

Whose files are in the directory (:mod:`~mambarec_pyg.train.rundir`'s rule):

* on :meth:`~RunRecorder.open`, the temporaries that a killed write left
  (``.last.pt.XXXXXXXX.tmp``) are removed;
* a resumed run appends to ``train.log``;
* a new run in a directory that holds an earlier run's files (``--overwrite``) leaves
  them as they are -- its messages wait in memory -- until it writes its first
  checkpoint or results; it then removes the earlier run's record and starts a fresh
  ``train.log`` with its messages so far (:meth:`~RunRecorder.claim`). A new run
  stopped before then (Ctrl-C, divergence or an error during its first epoch) leaves
  the directory as it was, ``train.log`` included. With ``keep_log`` (``--resume``
  finding no ``last.pt``) the earlier ``train.log`` is continued instead;
* ``results.json`` names only checkpoints that exist and hold this run's weights, and
  :meth:`~RunRecorder.on_disk` says in words what the directory holds.

A recorder made with ``is_writer=False`` writes nothing and prints nothing: the
processes of a data-parallel run other than rank 0 train with one.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional

import torch

from ..config import Config, TrainConfig, to_dict
from ..utils import progress
from .checkpoint import environment, save_checkpoint, write_json
from .rundir import (RunLock, earlier_run_files, remove_earlier_run,
                     remove_leftover_temporaries)
from .state import RunState
from .tracking import write_history_files

__all__ = ['RunRecorder']

log = logging.getLogger('mambarec_pyg.train.trainer')


class RunRecorder:
    """Writes a run's directory and messages (see the module doc).

    Args:
        output_dir: the run directory; ``None`` writes no files (messages still go
            to the console).
        config: the run's train section, its protocol resolved.
        run_config: the whole config, when the run has one (recorded in checkpoints,
            ``results.json`` and ``config.yaml``).
        model_name: the model's registered name.
        data_spec: how to load the data again (recorded for ``evaluate`` and
            ``recommend``).
        dataset: the data's name and shape.
        device: the training device (recorded with the environment).
        quiet: no progress bars and no messages on the console.
        is_writer: ``False``: no files, no console output (a data-parallel process
            other than rank 0).
        fingerprint: returns the data's fingerprint
            (:func:`~mambarec_pyg.data.fingerprint.data_fingerprint`), called once,
            when the first checkpoint is written.
    """

    def __init__(self, output_dir: Optional[Path], *, config: TrainConfig,
                 run_config: Optional[Config] = None, model_name: str = '',
                 data_spec: Optional[Dict[str, Any]] = None,
                 dataset: Optional[Dict[str, Any]] = None,
                 device: Optional[torch.device] = None, quiet: bool = False,
                 is_writer: bool = True,
                 fingerprint: Optional[Callable[[], Dict[str, Any]]] = None) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.config = config
        self.run_config = run_config
        self.model_name = model_name
        self.data_spec = data_spec
        self.dataset = dict(dataset or {})
        self.device = device
        self.quiet = quiet
        self.is_writer = is_writer
        #: epochs completed when ``last.pt`` was last written (by this run or the
        #: one it resumed).
        self.last_epoch = 0
        #: the best epoch ``best.pt`` holds (``-1``: none written by this run).
        self.best_epoch = -1
        self._config_written = False
        self._last_write = time.monotonic()
        self._log_file = None
        self._fingerprint_fn = fingerprint
        self._fingerprint: Optional[Dict[str, Any]] = None
        #: whether the directory holds this run's record (see :meth:`claim`).
        self.claimed = False
        self._opened = False
        self._keep_log = False
        self._resumed = False
        self._pending: List[str] = []  # log lines waiting for claim()
        #: the leftover temporaries removed by :meth:`open`.
        self.removed_temporaries: List[Path] = []

    # -- paths ------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """Whether files are written (a directory, and this process writes)."""
        return self.output_dir is not None and self.is_writer

    def _path(self, name: str) -> Optional[Path]:
        return self.output_dir / name if self.output_dir is not None else None

    @property
    def best_path(self) -> Optional[Path]:
        return self._path('best.pt')

    @property
    def last_path(self) -> Optional[Path]:
        return self._path('last.pt')

    @property
    def results_path(self) -> Optional[Path]:
        return self._path('results.json')

    # -- what is on disk --------------------------------------------------------------
    def state_dict(self) -> Dict[str, int]:
        """What the directory's checkpoints hold: ``last_epoch`` (epochs completed in
        ``last.pt``) and ``best_epoch`` (the epoch in ``best.pt``)."""
        return {'last_epoch': self.last_epoch, 'best_epoch': self.best_epoch}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Take what the checkpoints hold (a resumed run's) and restart the
        ``last.pt`` interval."""
        self.last_epoch = int(state['last_epoch'])
        self.best_epoch = int(state['best_epoch'])
        self._last_write = time.monotonic()

    # -- opening and closing ----------------------------------------------------------
    def lock(self) -> ContextManager:
        """The directory's :class:`~mambarec_pyg.train.rundir.RunLock` (nothing to
        hold without a directory, or in a process that does not write)."""
        return RunLock(self.output_dir) if self.writes else contextlib.nullcontext()

    def open(self, resumed: bool = False, keep_log: bool = False) -> None:
        """Start writing the run directory (hold :meth:`lock` first).

        Creates the directory and removes the temporaries killed writes left there.
        A ``resumed`` run (its ``last.pt`` was loaded) and a new run in a directory
        without an earlier run's files :meth:`claim` the directory at once (their
        messages go straight to ``train.log``); a new run in a directory with an
        earlier run's files claims it with its first checkpoint or results.
        ``keep_log``: continue the earlier ``train.log`` then instead of replacing
        it.
        """
        if not self.writes or self._opened:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._opened = True
        self._keep_log = keep_log
        self._resumed = resumed
        self.removed_temporaries = remove_leftover_temporaries(self.output_dir)
        if resumed or not earlier_run_files(self.output_dir):
            self.claim()
        if self.removed_temporaries:
            self.log(f'removed {len(self.removed_temporaries)} temporary file(s) that an '
                     f'interrupted write left in {self.output_dir}: '
                     + ', '.join(p.name for p in self.removed_temporaries))

    def claim(self) -> None:
        """Make the directory this run's: remove an earlier run's record (all of it
        but ``train.log`` with ``keep_log``; nothing for a resumed run, whose record
        it is) and open ``train.log`` with the messages logged so far. Called before
        the run writes its first file."""
        if not self.writes or self.claimed:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # (a recorder used without open() only writes, as it always did)
        removed = remove_earlier_run(
            self.output_dir, keep=('train.log', ) if self._keep_log else ()) \
            if self._opened and not self._resumed else []
        self.claimed = True
        self._log_file = open(self.output_dir / 'train.log', 'a')
        for line in self._pending:
            self._log_file.write(line)
        self._pending = []
        self._log_file.flush()
        if removed:
            self.log(f'this run replaces the earlier run in {self.output_dir} (removed '
                     f'its {", ".join(removed)})')

    def close(self) -> None:
        """Close ``train.log``. Messages of a run that never claimed the directory
        are dropped from disk (they went to the console and :mod:`logging`)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._pending = []

    # -- messages ---------------------------------------------------------------------
    def log(self, msg: str) -> None:
        """``msg`` to :mod:`logging`, ``train.log`` and (unless quiet) the console."""
        log.info(msg)
        if not self.is_writer:
            return
        line = time.strftime('%Y-%m-%d %H:%M:%S ') + msg + '\n'
        if self._log_file is not None:
            self._log_file.write(line)
            self._log_file.flush()
        elif self._opened and not self.claimed:
            self._pending.append(line)
        if not self.quiet:
            from tqdm.auto import tqdm
            tqdm.write(msg)

    def bar(self, **kwargs):
        """A progress bar (:func:`~mambarec_pyg.utils.progress`), shown only where
        the run prints and a terminal watches."""
        return progress(enabled=self.is_writer and not self.quiet, **kwargs)

    # -- files ------------------------------------------------------------------------
    def due(self) -> bool:
        """Whether ``last.pt`` is due (``checkpoint_interval_s`` has passed since it
        was last written; always with an interval of 0)."""
        interval = self.config.checkpoint_interval_s
        return interval == 0 or time.monotonic() - self._last_write >= interval

    def fingerprint(self) -> Optional[Dict[str, Any]]:
        """The data's fingerprint (computed on the first call), or ``None`` when the
        recorder was given no way to compute it."""
        if self._fingerprint is None and self._fingerprint_fn is not None:
            self._fingerprint = self._fingerprint_fn()
        return self._fingerprint

    def header(self) -> Dict[str, Any]:
        """What every checkpoint records about the run: model, config, data (where
        to load them, their shape and -- when the recorder can compute it -- their
        fingerprint)."""
        header = {'model_name': self.model_name,
                  'train_config': to_dict(self.config),
                  'config': to_dict(self.run_config) if self.run_config else None,
                  'data': self.data_spec, 'dataset': self.dataset}
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            header['data_fingerprint'] = fingerprint
        return header

    def write_last(self, state: RunState, checkpoint: Callable[[], Dict[str, Any]]
                   ) -> None:
        """``last.pt`` with ``checkpoint()`` (built only when written), unless it
        already holds this epoch."""
        if not self.writes or (self.last_epoch == state.epoch and
                               self.last_path.is_file()):
            return
        self.claim()
        t0 = time.perf_counter()
        save_checkpoint(self.last_path, checkpoint())
        self._write_config()
        write_history_files(self.output_dir, state.history)
        self.last_epoch = state.epoch
        self._last_write = time.monotonic()
        self._add_time(state, t0)

    def write_best(self, state: RunState) -> None:
        """``best.pt`` with the best epoch's weights, unless it already holds them."""
        if not self.writes or state.best_weights is None or \
                state.best_epoch == self.best_epoch:
            return
        self.claim()
        t0 = time.perf_counter()
        # the weights are those after epoch best_epoch
        save_checkpoint(self.best_path, {**self.header(), **state.best_summary(),
                                         'epoch': state.best_epoch + 1, 'kind': 'best',
                                         'model': state.best_weights})
        self._write_config()
        self.best_epoch = state.best_epoch
        self._add_time(state, t0)

    def write_results(self, status: str, state: RunState,
                      error: Optional[str] = None) -> None:
        """``results.json`` (:meth:`results`)."""
        if self.writes:
            self.claim()
            write_json(self.results_path, self.results(status, state, error))
            self._write_config()
            write_history_files(self.output_dir, state.history)

    def results(self, status: str, state: RunState,
                error: Optional[str] = None) -> Dict[str, Any]:
        """The content of ``results.json``: status, model, best epoch, its valid and
        test metrics, epochs, warnings, config, data, history, timings, environment,
        the checkpoints' paths and any error."""
        out = {
            'status': status,
            'model': self.model_name,
            'best_epoch': state.best_epoch,
            'valid_metric': self.config.valid_metric,
            'valid': state.best_valid,
            'test': state.best_test,
            'epochs': state.epoch,
            'warnings': state.warnings,
            'config': (to_dict(self.run_config) if self.run_config else
                       {'train': to_dict(self.config)}),
            'data': self.data_spec,
            'dataset': self.dataset,
            'history': state.history,
            'timings': state.timing_summary(),
            'environment': environment(self.device),
        }
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            out['data_fingerprint'] = fingerprint
        if self.output_dir is not None:
            out['checkpoints'] = {name: str(path) for name, path in
                                  self.checkpoints().items()}
        if error is not None:
            out['error'] = error
        return out

    def checkpoints(self) -> Dict[str, Path]:
        """The checkpoints in the directory that hold this run's weights (``'best'``,
        ``'last'``), by path."""
        out = {}
        if self.writes and self.best_epoch >= 0 and self.best_path.is_file():
            out['best'] = self.best_path
        if self.writes and self.last_epoch > 0 and self.last_path.is_file():
            out['last'] = self.last_path
        return out

    def on_disk(self, results: bool = False) -> str:
        """What the run directory holds of this run, as a sentence for a message:
        the checkpoints and which epoch each holds, and ``results.json`` (``results``:
        it is about to be written)."""
        if self.output_dir is None:
            return 'nothing is saved (no output directory)'
        if not self.is_writer:
            return 'this process writes no files'
        if not self.claimed:
            return (f'nothing was written to {self.output_dir}'
                    + ('; the earlier run\'s files there are as they were'
                       if self._opened and earlier_run_files(self.output_dir) else ''))
        found = self.checkpoints()
        parts = []
        if 'best' in found:
            parts.append(f'best.pt (the weights of epoch {self.best_epoch})')
        if 'last' in found:
            parts.append(f'last.pt (resumable after epoch {self.last_epoch - 1})')
        if results or self.results_path.is_file():  # after claim(): this run's
            parts.append('results.json')
        if not parts:
            return (f'no checkpoint or results were written to {self.output_dir} '
                    f'(only train.log)')
        return f'{self.output_dir} holds ' + ', '.join(parts)

    def _write_config(self) -> None:
        if self._config_written or not self.writes or self.run_config is None:
            return
        self.claim()
        self.run_config.to_yaml(self.output_dir / 'config.yaml')
        self._config_written = True

    @staticmethod
    def _add_time(state: RunState, t0: float) -> None:
        state.timings['checkpoint_s'] = state.timings.get('checkpoint_s', 0.0) + \
            time.perf_counter() - t0
