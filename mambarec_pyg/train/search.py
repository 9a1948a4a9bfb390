r"""Grid search over a model's hyperparameters, selected on the validation split.

Each model's config class carries the grid its authors' framework searched
(:attr:`ModelConfig.GRID <mambarec_pyg.config.ModelConfig.GRID>`): for MambaRec the
paper's MMD weight :math:`\times` Gaussian-kernel bandwidth,
:math:`\{0.1, 0.15, 0.2\} \times \{1.0, 1.5, 2.0\}` with seed 999
(docs/reference.md §1); for the baselines MMRec's grids (``../BASELINES.md``). Each
grid point is a full training run (:func:`~.experiment.run`) with a freshly built
model, seeded identically, in its own directory under ``output_dir``.

Selection: the point with the best **valid** ``valid_metric`` (Recall@20) wins, and
its test metrics (those of its best valid epoch) are reported. The released MMRec
framework instead picks the point with the best *test* Recall@20, which lets the test
set choose the hyperparameters and overstates the reported number; this module never
looks at test metrics when choosing.

Runs already finished in ``output_dir`` with the same settings are reused when
``resume=True``; unfinished ones continue from their ``last.pt`` (the rule of
:mod:`~mambarec_pyg.train.rundir`, which the experiments follow too: a finished run
recorded with other settings stops the search with an error naming them).
"""
from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch_geometric.data import HeteroData

from ..config import Config, ConfigError
from ..data.dataset import data_spec, load_dataset
from ..utils import resolve_device
from .checkpoint import environment, write_json
from .distributed import refuse_launch
from .experiment import ModelFactory, run
from .rundir import finished_run

__all__ = ['grid_search', 'SearchResult', 'default_grid', 'point_name']

PathLike = Union[str, os.PathLike]


def default_grid(config: Config) -> Dict[str, List[Any]]:
    """The grid of the model ``config.model`` belongs to (its ``GRID``)."""
    return {k: list(v) for k, v in type(config.model).GRID.items()}


@dataclass
class SearchResult:
    """Every grid point's outcome and the one selected on the validation split."""

    points: List[Dict[str, Any]]
    selected: Dict[str, Any]
    metric: str
    output_dir: Optional[str] = None
    timings: Dict[str, float] = field(default_factory=dict)

    @property
    def test(self) -> Dict[str, float]:
        """Test metrics of the selected point (at its best valid epoch)."""
        return self.selected['test']


def point_name(values: Mapping[str, Any]) -> str:
    """The directory name of a grid point (``mmd_weight=0.1-mmd_bandwidth=1.0``)."""
    return '-'.join(f"{k.split('.')[-1]}={v}" for k, v in values.items())


def grid_search(data: Optional[HeteroData], config: Config,
                grid: Optional[Mapping[str, Sequence[Any]]] = None,
                output_dir: Optional[PathLike] = None, *, resume: bool = False,
                quiet: bool = True, model_factory: Optional[ModelFactory] = None,
                executor=None, sampler: str = 'grid', trials: Optional[int] = None,
                optuna_sampler: str = 'tpe', log: Sequence[str] = (),
                ) -> SearchResult:
    """Train one model per grid point; select the best on the validation split.

    Args:
        data: the dataset (``None`` loads ``config.data``).
        config: the base configuration; ``config.train.seed`` seeds every point (999
            by default, as in the paper).
        grid: dotted option names to lists of values (default: the model's grid,
            :func:`default_grid`; for MambaRec the paper's 3 x 3 MMD grid); the
            Cartesian product is searched.
        output_dir: one sub-directory per point plus ``search.json``.
        resume: reuse finished points and continue unfinished ones.
        quiet: no progress bars inside the runs.
        model_factory: ``factory(data, model_config)``; default: the registered
            model ``config.model`` names.
        executor: an :class:`~mambarec_pyg.experiments.executors.ExecutorOptions`:
            the points run as cells of an experiment (local processes, Ray, Slurm;
            :mod:`~mambarec_pyg.train.parallel_search`), each reused when finished
            and resumed when interrupted; needs ``output_dir`` and no
            ``model_factory``. ``None``: one after the other in this process.
        sampler: ``'grid'`` (every point) or ``'optuna'``: an Optuna study over the
            grid's values (``optuna_sampler`` ``'tpe'`` or ``'grid'``), stored in
            ``output_dir/optuna.db`` (SQLite) so that several commands share it,
            until it holds ``trials`` finished trials (default: the grid's size).
        log: trackers every point logs to (``'tensorboard'``, ``'mlflow'``).

    Returns:
        :class:`SearchResult`; ``search.json`` holds every point (values, valid and
        test metrics, best epoch, epochs, time), the selection, the base config,
        timings and environment.
    """
    refuse_launch('a grid search (mambarec search)')
    grid = dict(default_grid(config) if grid is None else grid)
    if not grid:
        raise ConfigError(f'grid: model {type(config.model).name!r} has no grid; give '
                          f'one with --grid OPTION=V1,V2')
    if any(len(v) == 0 for v in grid.values()):
        raise ConfigError('grid: expected at least one option with at least one value')
    for key in grid:  # fail before any training on a misspelt option
        config.with_overrides({key: list(grid[key])[0]})
    if sampler not in ('grid', 'optuna'):
        raise ConfigError(f"--sampler: expected 'grid' or 'optuna', got {sampler!r}")
    if executor is not None or sampler != 'grid' or log:
        from .parallel_search import search_on_executor
        return search_on_executor(config, grid, output_dir, resume=resume,
                                  quiet=quiet, executor=executor, sampler=sampler,
                                  trials=trials, optuna_sampler=optuna_sampler,
                                  log=log, model_factory=model_factory, data=data)
    if data is None:
        data = load_dataset(config.data)
    out = Path(output_dir) if output_dir is not None else None
    metric = config.train.valid_metric
    start = time.perf_counter()
    points: List[Dict[str, Any]] = []
    keys = list(grid)
    combos = list(itertools.product(*(grid[k] for k in keys)))
    for n, combo in enumerate(combos):
        values = dict(zip(keys, combo))
        cfg = config.with_overrides(values)
        name = point_name(values)
        point_dir = out / name if out is not None else None
        record = _finished(point_dir, cfg) if (resume and point_dir is not None) \
            else None
        if record is None:
            if not quiet:
                print(f'[{n + 1}/{len(combos)}] {name}', flush=True)
            t0 = time.perf_counter()
            result = run(cfg, point_dir, resume=resume, quiet=quiet, data=data,
                         model_factory=model_factory)
            record = {'valid': result.valid, 'test': result.test,
                      'best_epoch': result.best_epoch, 'epochs': result.epochs,
                      'status': result.status, 'time_s': time.perf_counter() - t0}
            if result.status == 'interrupted':
                raise KeyboardInterrupt
        points.append({'name': name, 'values': values, **record,
                       'output_dir': str(point_dir) if point_dir else None})
        if out is not None:
            write_json(out / 'search.json', _record(points, None, metric, config,
                                                    start, data))
    best = max(points, key=lambda p: p['valid'].get(metric, float('-inf')))
    result = SearchResult(points=points, selected=best, metric=metric,
                          output_dir=str(out) if out is not None else None,
                          timings={'total_s': time.perf_counter() - start})
    if out is not None:
        write_json(out / 'search.json', _record(points, best, metric, config, start,
                                                data))
    return result


def _finished(point_dir: Path, config: Config) -> Optional[Dict[str, Any]]:
    """The record of a finished run of ``config`` in ``point_dir`` to reuse, else
    ``None`` (:func:`~mambarec_pyg.train.rundir.finished_run`: a run recorded with
    fewer epochs or less patience is continued, one with other settings stops the
    search)."""
    saved, continue_run = finished_run(point_dir, config)
    if saved is None or continue_run:
        return None
    return {'valid': saved['valid'], 'test': saved['test'],
            'best_epoch': saved['best_epoch'], 'epochs': saved['epochs'],
            'status': saved['status'], 'time_s': saved['timings'].get('total_s'),
            'reused': True}


def _record(points, best, metric, config: Config, start: float,
            data: Optional[HeteroData]) -> Dict[str, Any]:
    return {
        'selection': f'best valid {metric} (test metrics never used to choose)',
        'metric': metric,
        'selected': best,
        'test': best['test'] if best else None,
        'points': points,
        'config': config.to_dict(),
        'data': data_spec(config.data, data),
        'dataset': str(getattr(data, 'name', '')) if data is not None else
        (config.data.dataset or f'synthetic-{config.data.synthetic}'),
        'timings': {'total_s': time.perf_counter() - start},
        'environment': environment(resolve_device(config.train.device)),
        'complete': best is not None,
    }
