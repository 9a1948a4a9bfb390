"""Cells, resuming, progress and the summary: what every experiment shares.

An experiment is a set of **cells**; a cell is one full training run
(:func:`mambarec_pyg.train.experiment.run`) of one :class:`~mambarec_pyg.config.Config`
in its own directory ``OUTPUT/runs/<dataset>/<row>/<setting>/seed-<seed>/``.

Resuming: a cell whose directory holds a finished run (``results.json`` with a final
status and a ``best.pt``) recorded with the same configuration is reused without
training; an unfinished one continues from its ``last.pt`` (the trainer's
``resume=True``). A finished run recorded with other settings stops the experiment
with an error naming them (unless only ``train.max_epochs``, ``train.patience`` or
``train.patience_warmup`` changed, and not to fewer epochs than it trained: the run
then continues), so a ``--quick`` output is never mistaken for a full one. These rules
are the run directory's (:mod:`mambarec_pyg.train.rundir`), shared with the trainer
and the grid search. Two cells
of one experiment with the same configuration (e.g. Figure 4's lambda_cl = 0.01 and
Figure 5's r = 8, lambda_mmd = 0.15, both the default MambaRec) share one run.

The flow: :meth:`Experiment.plan` (the cells) -> run them on the setup's executor
(:mod:`mambarec_pyg.train.executors`: this process, local worker processes, Ray or
Slurm; the cell's run is the same whichever) -> :meth:`Experiment.collect` (per-user
metrics and what else the report needs, written beside the runs; the only step after
the runs that may load data, build a model or use the :class:`Runner`) ->
:meth:`Experiment.report` (tables and figures from those files, read through a
:class:`Collected`: it never receives the runner and never builds a model; a missing
collected file stops it with :class:`~mambarec_pyg.errors.CollectedFileMissing`
naming the file). A cell another
command holds (its cell lock) is waited for and reused, never run twice; a failed
cell is reported with its directory and first error line and the others go on.

Progress: a line per finished cell on stderr -- cells done / total, the cell's
outcome, time elapsed and an estimate of the time left (the mean time of the cells
trained so far, times the cells left, divided by the workers) -- and a bar when a
terminal watches (:func:`mambarec_pyg.utils.progress`).

Per-user test metrics (for the paired significance tests) are computed from each
cell's best checkpoint once and kept in ``per_user_test.npz`` beside it.

``summary.json`` says which runs and configurations produced every number: the
experiment's command and options, and for each cell its directory, configuration,
status, best epoch, metrics and time.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence

import numpy as np

from ..config import Config, ConfigError, DataConfig, TrainConfig
from ..errors import CollectedFileMissing
from ..io import write_json
from ..train.rundir import FINAL_STATUSES as FINAL
from ..utils import progress
from ..train.executors import (PER_USER_FILE, Executor, ExecutorOptions, Task,
                               cell_is_locked, finished_outcome, make_executor,
                               save_per_user)

__all__ = ['DatasetSpec', 'Setup', 'Cell', 'CellResult', 'Runner', 'Collected',
           'Experiment',
           'ExperimentResult', 'FINAL', 'fmt_duration', 'QUICK_TRAIN']

#: ``--quick``: a handful of epochs in small batches, one thread (fastest for tiny data).
QUICK_TRAIN = {'max_epochs': 5, 'batch_size': 128, 'num_threads': 1}


def fmt_duration(seconds: Optional[float]) -> str:
    """``'1h02m'``, ``'3m05s'``, ``'12s'``; ``'?'`` for unknown."""
    if seconds is None or not np.isfinite(seconds):
        return '?'
    s = int(round(seconds))
    if s >= 3600:
        return f'{s // 3600}h{(s % 3600) // 60:02d}m'
    if s >= 60:
        return f'{s // 60}m{s % 60:02d}s'
    return f'{max(seconds, 0):.0f}s' if seconds >= 1 else f'{max(seconds, 0):.1f}s'


# ---------------------------------------------------------------------------------
# What an experiment runs on
# ---------------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    """One dataset of an experiment."""

    #: the name in tables and directories (``baby``, ``synthetic-tiny``).
    label: str
    #: how to load it.
    data: DataConfig
    #: the paper's dataset it is (``baby``, ``sports``, ``clothing``), or ``None``:
    #: synthetic data and other datasets are never compared with the paper.
    paper: Optional[str] = None

    @property
    def synthetic(self) -> bool:
        return self.data.dataset is None

    def to_dict(self) -> Dict[str, Any]:
        from ..data.dataset import data_spec
        return {'label': self.label, 'data': data_spec(self.data),
                'paper': self.paper, 'synthetic': self.synthetic}


@dataclass
class Setup:
    """The options of one experiment run (the command line, as a dataclass)."""

    #: the experiment's directory (runs/, tables, figures, summary.json).
    output: Path
    #: the datasets (in the order of the tables).
    datasets: List[DatasetSpec]
    #: training seeds (``train.seed``); several give mean +- std.
    seeds: List[int] = field(default_factory=lambda: [999])
    #: ``train.*`` options for every cell (field name -> value).
    train: Dict[str, Any] = field(default_factory=dict)
    #: row names (models or presets); ``None``: the experiment's default.
    models: Optional[List[str]] = None
    #: small version: few epochs, small batches (:data:`QUICK_TRAIN`).
    quick: bool = False
    #: run each model's grid first and select by valid (Table 2).
    search: bool = False
    #: no progress output.
    quiet: bool = False
    #: every run's epoch lines too.
    verbose: bool = False
    #: write the figures (needs matplotlib).
    figures: bool = True
    #: experiment-specific options (grids, sizes).
    options: Dict[str, Any] = field(default_factory=dict)
    #: the command line, for the summary.
    command: Optional[List[str]] = None
    #: where the cells run (``--executor``, ``--workers``, ...).
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)
    #: trackers every run logs to (``--log tensorboard mlflow``).
    log: Sequence[str] = ()

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if not self.datasets:
            raise ConfigError('no datasets: give --data ROOT --datasets NAME ... or '
                              '--synthetic PRESET')
        if not self.seeds:
            raise ConfigError('--seeds: expected at least one seed')

    def train_config(self, seed: int) -> TrainConfig:
        """The protocol of every cell: defaults, then ``--quick``'s, then ``train``."""
        values: Dict[str, Any] = {}
        if self.quick:
            values.update(QUICK_TRAIN)
        values.update(self.train)
        values['seed'] = seed
        from ..config import from_dict
        return from_dict(TrainConfig, values, 'train')

    def base_config(self, dataset: DatasetSpec, seed: int) -> Config:
        """A default-MambaRec config on ``dataset`` with the shared protocol."""
        return Config(data=dataset.data, train=self.train_config(seed))

    @property
    def comparable_with_paper(self) -> bool:
        return not self.quick


@dataclass
class Cell:
    """One training run of an experiment."""

    #: the run's directory under ``OUTPUT/runs/``.
    key: str
    dataset: DatasetSpec
    #: the row of the table it belongs to (a model or preset name).
    row: str
    seed: int
    config: Config
    #: what the cell varies, for tables and the summary (e.g. ``{'setting': 'w/o LA'}``).
    labels: Dict[str, Any] = field(default_factory=dict)


@dataclass
class CellResult:
    """A cell's outcome."""

    cell: Cell
    directory: Path
    #: a final status of the run, ``'failed'`` or ``'interrupted'``.
    status: str
    valid: Dict[str, float] = field(default_factory=dict)
    test: Dict[str, float] = field(default_factory=dict)
    best_epoch: int = -1
    epochs: int = 0
    #: the run's training time in total and per epoch (median over epochs).
    time_s: float = float('nan')
    epoch_s: float = float('nan')
    #: finished before this invocation (nothing was trained now).
    reused: bool = False
    #: the directory of another cell with the same configuration, if shared.
    shared_with: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status in FINAL

    def to_dict(self, root: Path) -> Dict[str, Any]:
        c = self.cell
        return {'key': c.key, 'directory': _rel(self.directory, root),
                'dataset': c.dataset.label, 'row': c.row, 'seed': c.seed,
                'labels': c.labels, 'status': self.status, 'reused': self.reused,
                'shared_with': self.shared_with, 'best_epoch': self.best_epoch,
                'epochs': self.epochs, 'time_s': self.time_s,
                'epoch_train_s': self.epoch_s, 'valid': _metrics(self.valid),
                'test': _metrics(self.test), 'error': self.error,
                'config': c.config.to_dict()}


def _metrics(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in (m or {}).items() if k != 'per_user'}


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------
class Runner:
    """Runs cells on the setup's executor, reusing finished ones; see the module doc.

    Args:
        setup: the experiment's options (output directory, executor, quiet, verbose).
        total: cells expected in all (for the progress line); grows if more are run.
        per_user: compute per-user test metrics right after each run.
        log: where progress lines go (default: stderr; nothing when quiet).
        group: the name of the group of runs in the trackers (default: the output
            directory's name).
        executor: runs the cells (default: the one ``setup.executor`` names, made on
            first use).
    """

    #: seconds between two looks at a cell that another process runs.
    POLL_S = 1.0

    def __init__(self, setup: Setup, total: int, per_user: bool = False,
                 log: Optional[Callable[[str], None]] = None, group: str = '',
                 executor: Optional[Executor] = None) -> None:
        self.setup = setup
        self.root = setup.output
        self.total = total
        self.per_user_now = per_user
        self.done = 0
        self.trained = 0
        self.trained_s = 0.0
        self.start = time.perf_counter()
        self.results: List[CellResult] = []
        self._by_config: Dict[str, CellResult] = {}
        self._data_key: Optional[str] = None
        self._data = None
        self._log = log
        self.group = group or setup.output.name
        self._executor = executor
        self.missing: List[CellResult] = []
        self._bar = progress(total=total, enabled=not setup.quiet, desc='experiment',
                             unit='run')

    # -- output -------------------------------------------------------------------
    def say(self, message: str) -> None:
        """A progress line (stderr, above the bar), unless quiet."""
        if self.setup.quiet:
            return
        if self._log is not None:
            self._log(message)
            return
        from tqdm.auto import tqdm
        tqdm.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()
        if self._executor is not None:
            self._executor.close()

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = make_executor(self.setup.executor,
                                           self.root / 'slurm', f'mambarec-{self.root.name}')
            self.say(f'executor: {self._executor.describe()}')
        return self._executor

    # -- data ---------------------------------------------------------------------
    def data(self, config: DataConfig):
        """The dataset ``config`` names (the last one loaded is kept)."""
        from ..data.dataset import data_spec, load_dataset
        key = json.dumps(data_spec(config), sort_keys=True)
        if key != self._data_key:
            self._data, self._data_key = None, None
            self._data = load_dataset(config)
            self._data_key = key
        return self._data

    # -- cells --------------------------------------------------------------------
    def directory(self, cell: Cell) -> Path:
        return self.root / 'runs' / cell.key

    def task(self, cell: Cell) -> Task:
        """What a worker needs to run ``cell``."""
        return Task(key=cell.key, directory=str(self.directory(cell)),
                    config=cell.config.to_dict(), verbose=self.setup.verbose,
                    per_user=self.per_user_now, log=tuple(self.setup.log),
                    group=self.group,
                    log_dir=str(self.root) if self.setup.log else None)

    def run(self, cells: Sequence[Cell]) -> List[CellResult]:
        """Run (or reuse) ``cells`` on the executor; returns their results, in the
        order of ``cells``. A cell that fails is reported (its directory and first
        error line) and the others go on. A cell another process runs is waited for.

        Raises:
            KeyboardInterrupt: a run was interrupted (its checkpoints kept).
            ConfigError: a cell's directory holds a finished run with other settings.
        """
        results: Dict[int, CellResult] = {}
        first: Dict[str, int] = {}  # configuration -> the cell that runs it
        twins: Dict[int, int] = {}
        todo: List[int] = []
        for i, cell in enumerate(cells):
            key = _config_key(cell)
            shared = self._by_config.get(key)
            if shared is not None:
                results[i] = self._shared(cell, shared)
            elif key in first:
                twins[i] = first[key]
            else:
                first[key] = i
                todo.append(i)
        waiting: List[int] = []
        for i in list(todo):  # finished already: reused without a worker
            out = finished_outcome(self.task(cells[i]))
            if out is not None:
                results[i] = self._outcome(cells[i], out)
                todo.remove(i)
        while todo:
            tasks = {id(t): (i, t) for i, t in ((i, self.task(cells[i])) for i in todo)}
            for task, out in self.executor.run([t for _, t in tasks.values()]):
                i = tasks[id(task)][0]
                if out.get('status') == 'busy':
                    waiting.append(i)
                    continue
                results[i] = self._outcome(cells[i], out)
            todo = []
            if waiting:
                self.say(f'waiting for {len(waiting)} run(s) that another process '
                         f'holds: ' + ', '.join(cells[i].key for i in waiting[:3])
                         + (' ...' if len(waiting) > 3 else ''))
                while waiting and all(cell_is_locked(self.directory(cells[i]))
                                      for i in waiting):
                    time.sleep(self.POLL_S)
                todo = [i for i in waiting if not cell_is_locked(
                    self.directory(cells[i]))]
                waiting = [i for i in waiting if i not in todo]
        for i, j in twins.items():
            results[i] = self._shared(cells[i], results[j])
        return [results[i] for i in range(len(cells))]

    def _train(self, cell: Cell, directory: Path) -> CellResult:
        """Run ``cell`` here, now (no executor, no progress line): its result, or a
        ``'failed'`` one with the error's first line (the traceback in
        ``DIR/error.txt``).

        Raises:
            ConfigError: the options (every run would meet it).
            RunDirectoryBusy: another process holds the cell or its run directory.
        """
        from ..errors import RunDirectoryBusy
        from ..train.executors import run_cell
        task = self.task(cell)
        task.directory = str(directory)
        out = run_cell(task)
        status = out.get('status')
        if status == 'config_error':
            raise ConfigError(out.get('error') or 'other settings')
        if status == 'busy':
            raise RunDirectoryBusy(out.get('error') or f'{directory} is in use')
        if status == 'interrupted':
            return CellResult(cell, directory, 'interrupted')
        if status == 'failed' or 'record' not in out:
            return self._failed(cell, directory, out)
        return _from_saved(cell, directory, out['record'],
                           reused=bool(out.get('reused')))

    def _failed(self, cell: Cell, directory: Path, out: Dict[str, Any]) -> CellResult:
        error = out.get('error') or 'failed'
        if (directory / 'error.txt').is_file():
            error += f' (traceback: {_rel(directory / "error.txt", self.root)})'
        return CellResult(cell, directory, 'failed', error=error)

    def _shared(self, cell: Cell, shared: CellResult) -> CellResult:
        res = CellResult(**{**shared.__dict__, 'cell': cell,
                            'shared_with': _rel(shared.directory, self.root)})
        self._finish_cell(res, 0.0, note=f'same run as {shared.cell.key}')
        return res

    def _outcome(self, cell: Cell, out: Dict[str, Any]) -> CellResult:
        """The :class:`CellResult` of a worker's answer (see
        :func:`~mambarec_pyg.experiments.executors.run_cell`)."""
        directory = self.directory(cell)
        status = out.get('status')
        if status == 'config_error':
            raise ConfigError(out.get('error') or f'{directory}: other settings')
        if status == 'interrupted':
            self.results.append(CellResult(cell, directory, 'interrupted'))
            raise KeyboardInterrupt
        spent = float(out.get('spent') or 0.0)
        if status == 'failed' or 'record' not in out:
            res = self._failed(cell, directory, out)
            self.missing.append(res)
            self._finish_cell(res, spent)
            return res
        reused = bool(out.get('reused'))
        res = _from_saved(cell, directory, out['record'], reused=reused)
        self._by_config[_config_key(cell)] = res
        if reused:
            self._finish_cell(res, 0.0, note='finished earlier, reused')
        else:
            self.trained += 1
            self.trained_s += spent
            self._finish_cell(res, spent)
        return res

    def _finish_cell(self, res: CellResult, spent: float, note: str = '') -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self.results.append(res)
        self._bar.update(1)
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        parallel = max(1, min(left, getattr(self._executor, 'parallel', 1)))
        eta = (self.trained_s / self.trained * left / parallel) if self.trained \
            else None
        if res.ok:
            metric = res.cell.config.train.valid_metric
            outcome = (f'test {metric} {res.test.get(metric, float("nan")):.4f} '
                       f'(best epoch {res.best_epoch}, {res.epochs} epochs'
                       + (f', {fmt_duration(spent)}' if spent else '') + ')')
        else:
            outcome = f'FAILED ({_rel(res.directory, self.root)}): {res.error}'
        self.say(f'[{self.done}/{self.total}] {self._name(res.cell)}: {outcome}'
                 + (f' [{note}]' if note else '')
                 + f' | elapsed {fmt_duration(elapsed)}, '
                 + ('all done' if left == 0 else f'about {fmt_duration(eta)} left'
                    if eta is not None else 'time left not known yet'))

    @staticmethod
    def _name(cell: Cell) -> str:
        parts = [cell.dataset.label, cell.row]
        if 'setting' in cell.labels:
            parts.append(str(cell.labels['setting']))
        elif 'point' in cell.labels:
            kind = 'grid point' if cell.labels.get('search') else 'selected point'
            parts.append(f"{kind} {cell.labels['point']}")
        return ' | '.join(parts) + f' | seed {cell.seed}'

    # -- per-user metrics ---------------------------------------------------------
    def per_user(self, res: CellResult) -> Dict[str, np.ndarray]:
        """Per-user test metrics of ``res``'s best checkpoint (``users``,
        ``recall@K``, ``ndcg@K``), computed once and kept beside it (for
        :meth:`collect`; a report reads them with :meth:`Collected.per_user`)."""
        path = res.directory / PER_USER_FILE
        if _fresh(path, res.directory / 'best.pt'):
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        best = res.directory / 'best.pt'
        from ..train.experiment import load_run
        data = self.data(res.cell.config.data)
        model, data, _ = load_run(best, device=res.cell.config.train.device, data=data)
        return save_per_user(res.directory, model, data, res.cell.config.train)

    def collect(self, results: Sequence[CellResult]) -> None:
        """Make sure every finished cell has its per-user test metrics on disk (a cell
        reused from a run made without them gets them now), so that the report reads
        files only."""
        for res in results:
            if res.ok and res.shared_with is None:
                self.per_user(res)


def _fresh(path: Path, best: Path) -> bool:
    """``path`` exists and is not older than the checkpoint ``best`` it came from."""
    return path.is_file() and (not best.is_file() or
                               path.stat().st_mtime_ns >= best.stat().st_mtime_ns)


class Collected:
    """Read-only access to what :meth:`Experiment.collect` wrote under an
    experiment's directory ``root``: what a report reads. It only reads files (it
    holds no runner, loads no data, builds no model); a file that is missing (or
    older than the checkpoint it was computed from) is a
    :class:`~mambarec_pyg.errors.CollectedFileMissing` naming it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def missing(self, path: Path, why: str = 'is missing') -> CollectedFileMissing:
        return CollectedFileMissing(
            f'{path}: {why}; the report reads the files an experiment collects after '
            f'its runs -- run the same command again (finished runs are reused and '
            f'the files collected again)')

    def path(self, relative) -> Path:
        """``root / relative``, which must be a file."""
        path = self.root / relative
        if not path.is_file():
            raise self.missing(path)
        return path

    def json(self, relative) -> Any:
        """The JSON file ``root / relative``."""
        return json.loads(self.path(relative).read_text())

    def npz(self, relative) -> Dict[str, np.ndarray]:
        """The arrays of the ``.npz`` file ``root / relative``."""
        with np.load(self.path(relative)) as z:
            return {k: z[k] for k in z.files}

    def per_user(self, res: CellResult) -> Dict[str, np.ndarray]:
        """``res``'s per-user test metrics (``users``, ``recall@K``, ``ndcg@K``), as
        :meth:`Runner.collect` wrote them in its run directory."""
        path = res.directory / PER_USER_FILE
        if not path.is_file():
            raise self.missing(path)
        if not _fresh(path, res.directory / 'best.pt'):
            raise self.missing(path, 'is older than the best.pt beside it')
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


def _config_key(cell: Cell) -> str:
    return json.dumps(cell.config.to_dict(), sort_keys=True, default=str)


def _from_saved(cell: Cell, directory: Path, saved: Dict[str, Any],
                reused: bool) -> CellResult:
    history = saved.get('history') or []
    epoch_times = [r.get('train_s') for r in history if r.get('train_s')]
    return CellResult(
        cell=cell, directory=directory, status=saved.get('status', 'failed'),
        valid=saved.get('valid') or {}, test=saved.get('test') or {},
        best_epoch=int(saved.get('best_epoch', -1)), epochs=int(saved.get('epochs', 0)),
        time_s=float((saved.get('timings') or {}).get('total_s', float('nan'))),
        epoch_s=float(np.median(epoch_times)) if epoch_times else float('nan'),
        reused=reused)


# ---------------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------------
@dataclass
class ExperimentResult:
    """What :meth:`Experiment.run` returns."""

    name: str
    #: ``'complete'``, ``'incomplete'`` (some cells failed) or ``'interrupted'``.
    status: str
    results: List[CellResult]
    #: the files written (tables, figures, summary), by kind.
    files: Dict[str, str] = field(default_factory=dict)
    #: the experiment's table data (what NAME.json holds).
    table: Dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> List[CellResult]:
        return [r for r in self.results if not r.ok]


class Experiment:
    """Base class: an experiment plans cells, runs them (on the setup's executor),
    collects what its report needs from the runs' directories, and writes its report.

    Subclasses set :attr:`name`, :attr:`title`, :attr:`paper_ref` and
    :attr:`default_datasets`, and implement :meth:`plan` (the cells) and
    :meth:`report` (tables and figures from the results and the collected files;
    what else the report needs is written by :meth:`collect`). An experiment with a
    second stage (Table 2's ``--search``: the other seeds of the selected
    configuration) overrides :meth:`execute`.
    """

    name: ClassVar[str] = ''
    title: ClassVar[str] = ''
    #: the paper's table or figure it reproduces.
    paper_ref: ClassVar[str] = ''
    #: the paper's datasets for it (used when ``--data`` is given without
    #: ``--datasets``).
    default_datasets: ClassVar[Sequence[str]] = ('baby', 'sports', 'clothing')
    #: compute per-user test metrics right after each run.
    per_user: ClassVar[bool] = False
    #: needs scikit-learn as well as matplotlib.
    needs_sklearn: ClassVar[bool] = False

    @classmethod
    def add_arguments(cls, group) -> None:
        """Add this experiment's own options to ``group`` (an argparse argument
        group of ``mambarec experiment NAME``). The value of each (by its ``dest``)
        reaches :attr:`Setup.options` when given; none by default."""

    def plan(self, setup: Setup) -> List[Cell]:
        raise NotImplementedError

    def collect(self, setup: Setup, results: List[CellResult], runner: Runner) -> None:
        """After the runs, before the report: write what the report reads beside the
        runs (per-user test metrics where :attr:`per_user`; an experiment may add
        its own). The only step after the runs that may use the runner, load data
        or build a model."""
        if self.per_user:
            runner.collect(results)

    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> 'ExperimentResult':
        """Tables and figures from ``results`` and the files :meth:`collect` wrote,
        read through ``collected`` (never the runner, never a model)."""
        raise NotImplementedError

    def planned_total(self, setup: Setup) -> int:
        return len(self.plan(setup))

    def execute(self, setup: Setup, runner: Runner) -> List[CellResult]:
        return runner.run(self.plan(setup))

    # -- the whole thing ----------------------------------------------------------
    def run(self, setup: Setup) -> ExperimentResult:
        """Plan, run (reusing finished cells), collect, report; write
        ``summary.json``.

        Raises :class:`KeyboardInterrupt` after writing a partial summary when a run
        was interrupted.
        """
        from ..train.distributed import refuse_launch
        from .plots import require
        refuse_launch(f'mambarec experiment {self.name}')
        if setup.figures or self.needs_sklearn:  # fail before hours of training
            require(sklearn=self.needs_sklearn, matplotlib=setup.figures)
        setup.output.mkdir(parents=True, exist_ok=True)
        started = time.strftime('%Y-%m-%d %H:%M:%S')
        runner = Runner(setup, self.planned_total(setup), per_user=self.per_user,
                        group=f'{self.name} {setup.output.resolve()}')
        runner.say(f'{self.name}: {self.title} -- {runner.total} runs in '
                   f'{setup.output}')
        try:
            results = self.execute(setup, runner)
        except KeyboardInterrupt:
            runner.close()
            self.write_summary(setup, runner.results, started, 'interrupted', {})
            raise
        runner.close()
        self.collect(setup, results, runner)
        out = self.report(setup, results, Collected(setup.output))
        out.status = 'incomplete' if out.failed else 'complete'
        if out.failed and 'markdown' in out.files:
            _append_failures(Path(out.files['markdown']), out.failed)
        files = dict(out.files)
        files['summary'] = str(self.write_summary(setup, results, started, out.status,
                                                  files))
        out.files = files
        if out.failed:
            runner.say(f'{self.name}: {len(out.failed)} run(s) missing (run the same '
                       f'command again to retry them): ' + '; '.join(
                           f'{_rel(r.directory, setup.output)}: {r.error or r.status}'
                           for r in out.failed))
        runner.say(f'{self.name}: {out.status}; '
                   + ', '.join(f'{v}' for k, v in files.items()))
        return out

    def write_summary(self, setup: Setup, results: Sequence[CellResult], started: str,
                      status: str, files: Dict[str, str]) -> Path:
        from ..train.checkpoint import environment
        from ..utils import resolve_device
        root = setup.output
        try:
            env = environment(resolve_device(setup.train.get('device', 'auto')))
        except ConfigError:
            env = environment()
        summary = {
            'experiment': self.name,
            'title': self.title,
            'paper': self.paper_ref,
            'status': status,
            'command': setup.command,
            'started': started,
            'finished': time.strftime('%Y-%m-%d %H:%M:%S'),
            'quick': setup.quick,
            'comparable_with_paper': bool(setup.comparable_with_paper and any(
                d.paper for d in setup.datasets)),
            'note': note(setup),
            'datasets': [d.to_dict() for d in setup.datasets],
            'seeds': setup.seeds,
            'models': setup.models,
            'search': setup.search,
            'train': setup.train,
            'options': setup.options,
            'files': {k: _rel(Path(v), root) for k, v in files.items()},
            'cells': [r.to_dict(root) for r in results],
            'missing': [_rel(r.directory, root) for r in results if not r.ok],
            'executor': dataclasses.asdict(setup.executor),
            'environment': env,
        }
        return write_json(root / 'summary.json', summary)


def _append_failures(path: Path, failed: Sequence[CellResult]) -> None:
    from ..io import atomic_write_text
    lines = ['', '## Failed runs', '',
             'These runs did not finish; their entries are missing above (rerun the '
             'command to try them again).', '']
    lines += [f'- `{r.cell.key}`: {r.error or r.status}' for r in failed]
    atomic_write_text(path, path.read_text().rstrip() + '\n' + '\n'.join(lines) + '\n')


def note(setup: Setup) -> str:
    """The caveat printed above every table of ``setup``'s results."""
    parts = []
    synthetic = [d.label for d in setup.datasets if d.synthetic]
    if synthetic:
        parts.append(f'{", ".join(synthetic)}: synthetic data, NOT comparable with '
                     f"the paper's numbers")
    other = [d.label for d in setup.datasets if not d.synthetic and not d.paper]
    if other:
        parts.append(f'{", ".join(other)}: not one of the paper\'s datasets')
    if setup.quick:
        t = setup.train_config(setup.seeds[0])
        parts.append(f'--quick: at most {t.max_epochs} epochs in batches of '
                     f'{t.batch_size}; NOT comparable with the paper')
    return '; '.join(parts)
