"""The grid search on an executor, and its adaptive form on Optuna.

:func:`~mambarec_pyg.train.search.grid_search` comes here when it is given an
executor, a sampler other than ``'grid'`` or trackers. Every point is a cell: the
run of ``config`` with the point's values in ``OUTPUT/<point name>/``, run by
:func:`~mambarec_pyg.train.executors.run_cell` on the executor (local processes,
Ray, Slurm), reused when finished and resumed when interrupted, claimed through the
cell lock so that two commands on one directory never train a point twice.

``sampler='grid'`` runs every point of the grid. ``sampler='optuna'`` asks an Optuna
study for the points, ``workers`` at a time, and tells it each point's **valid**
metric: TPE (``optuna_sampler='tpe'``) or Optuna's grid sampler (``'grid'``) over the
grid's values as categorical choices; the grid form enqueues every point once). The study lives in ``OUTPUT/optuna.db``
(SQLite), so several commands -- on one machine or on several that see the
directory -- share it; each stops when the study holds ``trials`` finished trials.
A point the study asks for twice is trained once (its directory is reused).

Selection is on the validation split, as for the grid: the best valid metric among
the points run. (MMRec's framework selected on the test split.)
"""
from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import Config, ConfigError
from .checkpoint import write_json
from .executors import (ExecutorOptions, Task, cell_is_locked, finished_outcome,
                        make_executor)

__all__ = ['search_on_executor', 'OPTUNA_FILE']

#: The Optuna study's SQLite file in the search directory.
OPTUNA_FILE = 'optuna.db'
_FINAL = ('early_stopped', 'max_epochs', 'evaluated')


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


class _Points:
    """Runs points on an executor, waits for those another command holds, and keeps
    every outcome (by point name)."""

    def __init__(self, config: Config, out: Path, options: ExecutorOptions,
                 quiet: bool, log: Sequence[str], total: int) -> None:
        self.config, self.out, self._executor = config, out, None
        self.options, self.quiet, self.log = options, quiet, tuple(log)
        self.metric = config.train.valid_metric
        self.outcomes: Dict[str, Dict[str, Any]] = {}
        self.total = total
        self.start = time.perf_counter()
        self.trained_s = 0.0
        self.trained = 0

    @property
    def executor(self):
        """The executor, started when a point needs training."""
        if self._executor is None:
            self._executor = make_executor(self.options, self.out / 'slurm',
                                           f'mambarec-search-{self.out.name}')
            _say(self.quiet, f'executor: {self._executor.describe()}')
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()

    def task(self, name: str, values: Mapping[str, Any]) -> Task:
        cfg = self.config.with_overrides(dict(values))
        return Task(key=name, directory=str(self.out / name), config=cfg.to_dict(),
                    log=self.log,
                    group=f'search {self.out.resolve()}', log_dir=str(self.out) if self.log else None)

    def run(self, points: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Run ``points`` (``{'name', 'values'}``); returns their records."""
        todo = []
        for p in points:
            if p['name'] in self.outcomes:
                continue
            out = finished_outcome(self.task(p['name'], p['values']))
            if out is not None:  # finished already: reused without a worker
                self._done(p, out)
            else:
                todo.append(p)
        while todo:
            by_name = {p['name']: p for p in todo}
            waiting = []
            tasks = [self.task(p['name'], p['values']) for p in todo]
            for task, out in self.executor.run(tasks):
                if out.get('status') == 'busy':
                    waiting.append(by_name[task.key])
                    continue
                self._done(by_name[task.key], out)
            todo = []
            if waiting:
                _say(self.quiet, f'waiting for {len(waiting)} point(s) that another '
                                 f'process runs')
                while all(cell_is_locked(self.out / p['name']) for p in waiting):
                    time.sleep(1.0)
                todo = [p for p in waiting if not cell_is_locked(self.out / p['name'])]
                # the others are looked at again after these
                for p in waiting:
                    if p not in todo:
                        todo.append(p)
        return [self.outcomes[p['name']] for p in points]

    def _done(self, point: Dict[str, Any], out: Dict[str, Any]) -> None:
        status = out.get('status')
        if status == 'config_error':
            raise ConfigError(out.get('error') or 'a point holds other settings')
        if status == 'interrupted':
            raise KeyboardInterrupt
        record = out.get('record') or {}
        spent = float(out.get('spent') or 0.0)
        entry = {'name': point['name'], 'values': dict(point['values']),
                 'valid': record.get('valid') or {}, 'test': record.get('test') or {},
                 'best_epoch': record.get('best_epoch', -1),
                 'epochs': record.get('epochs', 0),
                 'status': status if status in _FINAL else 'failed',
                 'time_s': (record.get('timings') or {}).get('total_s'),
                 'output_dir': str(self.out / point['name'])}
        if out.get('reused'):
            entry['reused'] = True
        elif status in _FINAL:
            self.trained += 1
            self.trained_s += spent
        if entry['status'] == 'failed':
            entry['error'] = out.get('error') or status
        self.outcomes[point['name']] = entry
        done = len(self.outcomes)
        self.total = max(self.total, done)
        left = self.total - done
        parallel = max(1, min(left, getattr(self._executor, 'parallel', 1)))
        eta = (self.trained_s / self.trained * left / parallel) if self.trained \
            else None
        from ..experiments.runner import fmt_duration
        what = (f'valid {self.metric} {entry["valid"].get(self.metric, float("nan")):.4f}'
                f' (best epoch {entry["best_epoch"]}, {entry["epochs"]} epochs)'
                if entry['status'] != 'failed' else
                f'FAILED ({entry["output_dir"]}): {entry.get("error")}')
        _say(self.quiet, f'[{done}/{self.total}] {point["name"]}: {what}'
                         + (' [finished earlier, reused]' if entry.get('reused') else '')
                         + f' | elapsed {fmt_duration(time.perf_counter() - self.start)}'
                         + (', all done' if left == 0 else
                            f', about {fmt_duration(eta)} left' if eta is not None
                            else ''))


def search_on_executor(config: Config, grid: Mapping[str, Sequence[Any]],
                       output_dir, *, resume: bool = False, quiet: bool = True,
                       executor: Optional[ExecutorOptions] = None,
                       sampler: str = 'grid', trials: Optional[int] = None,
                       optuna_sampler: str = 'tpe', log: Sequence[str] = (),
                       model_factory=None, data=None):
    """See the module doc and :func:`~mambarec_pyg.train.search.grid_search`."""
    from .rundir import holds_run
    from .search import SearchResult, _record, point_name
    if output_dir is None:
        raise ConfigError('a search on an executor or with --sampler optuna needs an '
                          'output directory')
    if model_factory is not None:
        raise ConfigError('model_factory: a search on an executor builds the registered '
                          'model in each worker; register the model instead')
    options = executor or ExecutorOptions()
    out = Path(output_dir)
    keys = list(grid)
    every = [dict(zip(keys, combo)) for combo in
             itertools.product(*(list(grid[k]) for k in keys))]
    if not resume and any(holds_run(out / point_name(v)) for v in every):
        raise ConfigError(f'{out} already holds runs of this search; use --resume to '
                          f'reuse them, or another --output')
    if trials is not None and trials < 1:
        raise ConfigError(f'--trials: expected a positive number, got {trials}')
    if optuna_sampler not in ('tpe', 'grid'):
        raise ConfigError(f"--optuna-sampler: expected 'tpe' or 'grid', got "
                          f'{optuna_sampler!r}')
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metric = config.train.valid_metric
    total = len(every) if sampler == 'grid' else (trials or len(every))
    points = _Points(config, out, options, quiet, log, total)
    _say(quiet, f'search: {total} point(s) in {out}')
    try:
        if sampler == 'grid':
            ran = points.run([{'name': point_name(v), 'values': v} for v in every])
        else:
            ran = _optuna(points, grid, out, trials or len(every), optuna_sampler,
                          options.workers, metric)
    finally:
        points.close()
    ok = [p for p in ran if p['status'] != 'failed']
    best = max(ok, key=lambda p: p['valid'].get(metric, float('-inf'))) if ok else None
    record = _record(ran, best, metric, config, start, data)
    record['sampler'] = sampler if sampler == 'grid' else f'optuna-{optuna_sampler}'
    record['executor'] = {'kind': options.kind, 'workers': options.workers}
    if sampler != 'grid':
        record['study'] = str(out / OPTUNA_FILE)
    write_json(out / 'search.json', record)
    if best is None:
        raise ConfigError(f'{out}: every point failed: ' + '; '.join(
            f"{p['name']}: {p.get('error')}" for p in ran[:3]))
    return SearchResult(points=ran, selected=best, metric=metric, output_dir=str(out),
                        timings={'total_s': time.perf_counter() - start})


def _optuna(points: _Points, grid: Mapping[str, Sequence[Any]], out: Path,
            trials: int, kind: str, workers: int, metric: str) -> List[Dict[str, Any]]:
    """Ask the shared study for points, ``workers`` at a time, until it holds
    ``trials`` finished trials; returns the points run, in the order asked."""
    try:
        import optuna
    except ImportError:
        raise ImportError("--sampler optuna needs Optuna: pip install "
                          "'mambarec-pyg[optuna]'") from None
    from .search import point_name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f'sqlite:///{(out / OPTUNA_FILE).resolve()}'
    space = {k: optuna.distributions.CategoricalDistribution(list(v))
             for k, v in grid.items()}
    # the grid: every point enqueued once (Optuna's GridSampler stops a study from
    # inside optimize(), which ask-and-tell does not use)
    sampler = optuna.samplers.TPESampler(seed=0) if kind == 'tpe' else \
        optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(study_name='search', storage=storage,
                                sampler=sampler, direction='maximize',
                                load_if_exists=True)
    if kind == 'grid':
        every = list(itertools.product(*(list(v) for v in grid.values())))
        trials = min(trials, len(every))
        for combo in every:
            study.enqueue_trial(dict(zip(grid, combo)), skip_if_exists=True)
    study.set_user_attr('metric', f'valid {metric}')
    done = lambda: sum(t.state == optuna.trial.TrialState.COMPLETE  # noqa: E731
                       for t in study.get_trials(deepcopy=False))
    ran: Dict[str, Dict[str, Any]] = {}
    order: List[str] = []
    while done() < trials:
        batch = []
        for _ in range(max(1, min(workers, trials - done()))):
            trial = study.ask(space)
            values = {k: trial.params[k] for k in grid}
            batch.append((trial, {'name': point_name(values), 'values': values}))
        outcomes = points.run([p for _, p in batch])
        for (trial, point), outcome in zip(batch, outcomes):
            if point['name'] not in ran:
                order.append(point['name'])
            ran[point['name']] = outcome
            value = outcome['valid'].get(metric)
            if outcome['status'] == 'failed' or value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(trial, float(value))
    # the points of the study's other trials (an earlier or another command's):
    # finished, so reused without training
    others = []
    for t in study.get_trials(deepcopy=False,
                              states=(optuna.trial.TrialState.COMPLETE, )):
        values = {k: t.params[k] for k in grid if k in t.params}
        name = point_name(values)
        if len(values) == len(grid) and name not in ran and \
                name not in [p['name'] for p in others]:
            others.append({'name': name, 'values': values})
    for point, outcome in zip(others, points.run(others)):
        ran[point['name']] = outcome
        order.append(point['name'])
    return [ran[n] for n in order]
