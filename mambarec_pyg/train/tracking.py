"""Experiment tracking: every epoch's metrics and loss parts, in files and trackers.

* Always, without a dependency: ``metrics.csv`` and ``metrics.jsonl`` beside
  ``results.json`` -- one row per epoch of the run's history (``results.json``'s
  ``history``), written with every checkpoint and with the results
  (:func:`write_history_files`, called by the run recorder). The CSV has one column
  per value, flattened: ``epoch``, ``lr``, ``train_s``, ``eval_s``, ``best``,
  ``loss.<part>``, ``valid.<metric>``, ``test.<metric>`` (only at the epochs that
  became the best); the JSONL holds the history's records as they are.
* Optionally (:func:`make_trackers`, ``--log tensorboard`` / ``--log mlflow``):
  TensorBoard event files (``torch.utils.tensorboard``; needs the ``tensorboard``
  package) and MLflow runs (``mlflow-skinny``; a local ``mlruns/`` file store unless
  ``MLFLOW_TRACKING_URI`` says otherwise), with the run's configuration as
  parameters and every epoch's values as metrics. An experiment is one group: one
  TensorBoard directory with a sub-directory per run, one MLflow experiment with a
  run per cell. Both are the ``track`` extra: ``pip install 'mambarec-pyg[track]'``.

A tracker is a trainer callback (``cb(trainer, record)`` after every epoch) with a
``close()``; a resumed run continues logging from its next epoch.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

__all__ = ['HISTORY_CSV', 'HISTORY_JSONL', 'TRACKERS', 'flatten', 'history_table',
           'write_history_files', 'read_history_csv', 'make_trackers',
           'TensorBoardTracker', 'MLflowTracker']

from .rundir import HISTORY_FILES

HISTORY_CSV, HISTORY_JSONL = HISTORY_FILES
#: The trackers ``--log`` takes.
TRACKERS = ('tensorboard', 'mlflow')


def flatten(record: Mapping[str, Any], prefix: str = '') -> Dict[str, Any]:
    """``{'loss': {'bpr': 1.0}}`` -> ``{'loss.bpr': 1.0}`` (lists are kept)."""
    out: Dict[str, Any] = {}
    for key, value in record.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            out.update(flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def history_table(history: Sequence[Mapping[str, Any]]) -> str:
    """The history as CSV text: one row per epoch, one column per flattened value
    (in order of first appearance; empty where an epoch has none)."""
    rows = [flatten(r) for r in history]
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(columns)
    for row in rows:
        w.writerow(['' if row.get(c) is None else
                    (json.dumps(row[c]) if isinstance(row[c], (list, tuple)) else
                     row[c]) for c in columns])
    return buf.getvalue()


def write_history_files(directory: Path, history: Sequence[Mapping[str, Any]]
                        ) -> None:
    """``metrics.csv`` and ``metrics.jsonl`` of ``history`` in ``directory``
    (atomically)."""
    from ..io import atomic_write_text
    directory = Path(directory)
    atomic_write_text(directory / HISTORY_CSV, history_table(history))
    atomic_write_text(directory / HISTORY_JSONL, ''.join(
        json.dumps(r, default=float) + '\n' for r in history))


def read_history_csv(path: Path) -> List[Dict[str, str]]:
    """The rows of a ``metrics.csv`` (values as text)."""
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _scalars(record: Mapping[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in flatten(record).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and
            k != 'epoch'}


def _params(config) -> Dict[str, str]:
    return {k: str(v) for k, v in flatten(config.to_dict()).items()}


class TensorBoardTracker:
    """Every epoch's values as TensorBoard scalars in ``log_dir/<run>``; the
    configuration as text (and as hyperparameters with the final metrics)."""

    def __init__(self, log_dir: Path, run_name: str, config) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--log tensorboard needs the tensorboard package: pip "
                              "install 'mambarec-pyg[track]'") from None
        self.path = Path(log_dir) / run_name
        self.writer = SummaryWriter(log_dir=str(self.path))
        self.writer.add_text('config', '\n'.join(
            f'    {k}: {v}' for k, v in _params(config).items()), 0)

    def __call__(self, trainer, record: Mapping[str, Any]) -> None:
        step = int(record.get('epoch', 0))
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key.replace('@', '_at_'), value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run per training run, in the experiment ``group``; the config as
    parameters, every epoch's values as metrics (step = epoch). The store is
    ``MLFLOW_TRACKING_URI`` when set, else ``log_dir`` (a local ``mlruns/``)."""

    def __init__(self, log_dir: Path, run_name: str, config, group: str) -> None:
        try:
            import mlflow
        except ImportError:
            raise ImportError("--log mlflow needs MLflow: pip install "
                              "'mambarec-pyg[track]' (mlflow-skinny)") from None
        self.mlflow = mlflow
        uri = os.environ.get('MLFLOW_TRACKING_URI')
        if not uri:
            # the local file store (no database to set up; shared by the workers of
            # one machine or of a cluster's shared file system); MLflow 3 asks
            # for this opt-in to use it
            uri = Path(log_dir).resolve().as_uri()
            os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        name = group or 'mambarec'
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found is not None else \
            self._create(name)
        runs = self.client.search_runs([experiment_id],
                                       f"tags.mlflow.runName = '{run_name}'")
        if runs:  # a resumed run logs on into the same MLflow run
            self.run_id = runs[0].info.run_id
        else:
            run = self.client.create_run(experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
            params = _params(config)
            entities = [mlflow.entities.Param(k, v[:500]) for k, v in params.items()]
            for i in range(0, len(entities), 100):
                self.client.log_batch(self.run_id, params=entities[i:i + 100])

    def _create(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - made at the same time by another worker
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def __call__(self, trainer, record: Mapping[str, Any]) -> None:
        import time
        step = int(record.get('epoch', 0))
        now = int(time.time() * 1000)
        metrics = [self.mlflow.entities.Metric(k.replace('@', '_at_'), v, now, step)
                   for k, v in _scalars(record).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def make_trackers(names: Iterable[str], run_dir: Path, config, group: str = '',
                  run_name: Optional[str] = None, log_dir: Optional[str] = None
                  ) -> list:
    """The trackers ``names`` for the run in ``run_dir``. They write under
    ``log_dir`` (default: ``run_dir/tensorboard`` and ``run_dir/mlruns``; an
    experiment passes its own directory, so its runs are one group)."""
    out = []
    run_dir = Path(run_dir)
    run_name = run_name or run_dir.name
    for name in names:
        if name == 'tensorboard':
            base = Path(log_dir) / 'tensorboard' if log_dir else run_dir / 'tensorboard'
            out.append(TensorBoardTracker(base, run_name if log_dir else '.', config))
        elif name == 'mlflow':
            base = Path(log_dir) / 'mlruns' if log_dir else run_dir / 'mlruns'
            out.append(MLflowTracker(base, run_name, config, group))
        else:
            from ..errors import ConfigError
            raise ConfigError(f'--log: expected {" or ".join(TRACKERS)}, got {name!r}')
    return out
