"""Where the cells of an experiment (and the points of a grid search) run.

Every cell is one call of :func:`run_cell` on a :class:`Task` -- the same
deterministic run in the same directory ``OUTPUT/runs/<key>/`` whichever executor
calls it, so the tables do not depend on the executor or on the number of workers:

* :class:`LocalExecutor` -- this machine: ``workers=1`` runs the cells one after the
  other in this process (the default); more start a pool of processes, each with one
  GPU (``CUDA_VISIBLE_DEVICES``, round robin) when there are GPUs, and ``cores //
  workers`` CPU threads (``train.num_threads``, where the configuration leaves it
  at 0), so the workers do not oversubscribe the cores;
* :class:`RayExecutor` -- Ray tasks on a local cluster (``ray.init()``) or an existing
  one (``address``), one CPU or GPU each (the ``ray`` extra);
* :class:`SlurmExecutor` -- a Slurm job array through ``submitit``, one task per cell,
  with the partition, time limit, GPUs, CPUs and memory as options (the ``slurm``
  extra); ``cluster='local'`` runs the same code path on this machine.

A cell is claimed with a lock on ``DIR/.cell.lock`` (:class:`CellLock`, a
:class:`~mambarec_pyg.train.rundir.RunLock`) held from the check whether it is finished
until its run ends, so two commands started at once on one experiment directory share
the cells: a cell that another process holds comes back as ``'busy'`` and the caller
waits for it (then reuses it) instead of running it twice. The operating system drops
the lock of a process that dies, so a killed worker's cell is resumed (from its
``last.pt``) by the next command. Nothing here imports torch until a cell runs.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .. import errors
from ..errors import ConfigError, RunDirectoryBusy
from .rundir import RunLock

__all__ = ['Task', 'run_cell', 'finished_outcome', 'CellLock', 'ExecutorOptions', 'Executor',
           'LocalExecutor', 'RayExecutor', 'SlurmExecutor', 'make_executor',
           'EXECUTORS', 'cpu_cores', 'cell_is_locked']

#: The executors by name (``--executor``).
EXECUTORS = ('local', 'ray', 'slurm')
#: The per-user test metrics kept beside a cell's best checkpoint.
PER_USER_FILE = 'per_user_test.npz'


class CellLock(RunLock):
    """The claim on one cell: held from the check whether the cell is finished until
    its run has ended (the trainer's own lock, ``.lock``, only covers the run)."""

    NAME = '.cell.lock'


def cell_is_locked(directory: Path) -> bool:
    """Whether another process holds ``directory``'s :class:`CellLock` now."""
    if not (Path(directory) / CellLock.NAME).exists():
        return False
    lock = CellLock(directory)
    try:
        lock.acquire()
    except RunDirectoryBusy:
        return True
    lock.release()
    return False


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------
# One cell
# ---------------------------------------------------------------------------------
@dataclass
class Task:
    """What a worker needs to run one cell (plain data: it travels to other
    processes and machines)."""

    #: the cell's key (``dataset/row/.../seed-S``) and run directory.
    key: str
    directory: str
    #: the run's configuration (:meth:`mambarec_pyg.config.Config.to_dict`).
    config: Dict[str, Any]
    #: the run's epoch lines in the worker's output.
    verbose: bool = False
    #: compute per-user test metrics after training (for significance tests).
    per_user: bool = False
    #: CPU threads for the run where its ``train.num_threads`` is 0 (0: leave it).
    threads: int = 0
    #: trackers (``'tensorboard'``, ``'mlflow'``) and the group (experiment) name.
    log: Tuple[str, ...] = ()
    group: str = ''
    #: where the trackers write (``None``: beside the experiment, their default).
    log_dir: Optional[str] = None


def run_cell(task: Task) -> Dict[str, Any]:
    """Run (or reuse) one cell; returns its outcome as a dictionary:

    * ``status`` -- the run's final status; ``'busy'`` (another process holds the
      cell), ``'failed'``, ``'interrupted'`` or ``'config_error'`` (a finished run
      there has other settings; ``error`` says which);
    * ``record`` -- the run's ``results.json``; ``reused`` -- nothing was trained;
    * ``error`` -- the first line of the error, for a failed cell (the traceback is
      kept in ``DIR/error.txt``); ``spent`` -- seconds this call took.
    """
    from .rundir import finished_run
    start = time.perf_counter()
    directory = Path(task.directory)
    lock = CellLock(directory)
    try:
        lock.acquire()
    except RunDirectoryBusy as e:
        return {'status': 'busy', 'error': str(e)}
    try:
        from ..config import Config
        config = Config.from_dict(task.config)
        if task.threads and config.train.num_threads == 0:
            config = config.with_overrides({'train.num_threads': task.threads})
        saved, go_on = finished_run(directory, config)
        if saved is not None and not go_on:
            return {'status': saved.get('status'), 'record': saved, 'reused': True,
                    'spent': time.perf_counter() - start}
        return _train(task, config, directory, start)
    except ConfigError as e:
        return {'status': 'config_error', 'error': str(e)}
    except RunDirectoryBusy as e:  # a `mambarec train` in the cell's directory
        return {'status': 'busy', 'error': str(e)}
    finally:
        lock.release()


def finished_outcome(task: Task) -> Optional[Dict[str, Any]]:
    """:func:`run_cell`'s answer for a cell that is finished already (read without
    its lock: a finished run's files are final), else ``None`` -- so a command run
    again starts no worker for the cells it only reuses."""
    from ..config import Config
    from .rundir import finished_run
    try:
        saved, go_on = finished_run(task.directory, Config.from_dict(task.config))
    except ConfigError as e:
        return {'status': 'config_error', 'error': str(e)}
    if saved is None or go_on:
        return None
    return {'status': saved.get('status'), 'record': saved, 'reused': True,
            'spent': 0.0}


_DATA: Dict[str, Any] = {}


def _dataset(config):
    """The dataset ``config`` names (the last one loaded in this process is kept)."""
    import json
    from ..data.dataset import data_spec, load_dataset
    key = json.dumps(data_spec(config), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_dataset(config)
    return _DATA[key]


def _train(task: Task, config, directory: Path, start: float) -> Dict[str, Any]:
    from .experiment import run
    from .rundir import read_record
    from .tracking import make_trackers
    trackers = []
    try:
        data = _dataset(config.data)
        trackers = make_trackers(task.log, directory, config, group=task.group,
                                 run_name=task.key, log_dir=task.log_dir)
        extra = {'callbacks': trackers} if trackers else {}
        result = run(config, directory, resume=True, quiet=not task.verbose,
                     data=data, **extra)
    except (ConfigError, RunDirectoryBusy):
        raise
    except (errors.MambaRecError, RuntimeError, ValueError, OSError,
            ImportError) as e:
        # one failed run (a diverged loss, data a model cannot take, a checkpoint it
        # cannot resume from, out of memory) is reported, its traceback kept beside
        # it; the other runs go on
        from ..io import atomic_write_text
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / 'error.txt', traceback.format_exc())
        return {'status': 'failed', 'error': f'{type(e).__name__}: {first_line(e)}',
                'spent': time.perf_counter() - start}
    finally:
        for t in trackers:
            t.close()
    if result.status == 'interrupted':
        return {'status': 'interrupted', 'spent': time.perf_counter() - start}
    record = read_record(directory) or {}
    if task.per_user and result.model is not None and \
            record.get('status') in ('early_stopped', 'max_epochs', 'evaluated'):
        save_per_user(directory, result.model, data, config.train)
    return {'status': record.get('status', 'failed'), 'record': record,
            'reused': False, 'spent': time.perf_counter() - start}


def save_per_user(directory: Path, model, data, train) -> Dict[str, Any]:
    """Per-user test metrics of ``model`` (``users``, ``recall@K``, ``ndcg@K``),
    written to ``directory/per_user_test.npz``."""
    import numpy as np
    from ..io import atomic_path
    from .evaluate import evaluate
    metrics = evaluate(model, data, 'test', ks=train.topk,
                       batch_size=train.eval_batch_size, per_user=True)
    values = {k: np.asarray(v.numpy() if hasattr(v, 'numpy') else v)
              for k, v in metrics['per_user'].items()}
    with atomic_path(Path(directory) / PER_USER_FILE) as tmp:
        with open(tmp, 'wb') as f:
            np.savez(f, **values)
    return values


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else ''


# ---------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------
@dataclass
class ExecutorOptions:
    """The command line's executor options (``--executor`` and the rest)."""

    #: ``'local'``, ``'ray'`` or ``'slurm'``.
    kind: str = 'local'
    #: cells at once (local processes, Ray tasks in flight, Slurm array tasks).
    workers: int = 1
    #: an existing Ray cluster (``ray://host:10001`` or ``host:6379``); ``None``: a
    #: local one.
    ray_address: Optional[str] = None
    #: Slurm: partition, time limit in minutes, GPUs, CPUs and memory (GB) per task,
    #: account, and the submitit cluster (``'slurm'``; ``'local'`` runs the jobs
    #: here, for tests).
    slurm_partition: Optional[str] = None
    slurm_time: int = 24 * 60
    slurm_gpus: int = 0
    slurm_cpus: int = 1
    slurm_mem_gb: Optional[float] = None
    slurm_account: Optional[str] = None
    slurm_cluster: str = 'slurm'
    #: extra ``#SBATCH`` options (``key=value``).
    slurm_extra: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f'--executor: expected one of {", ".join(EXECUTORS)}, got '
                              f'{self.kind!r}')
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f'--workers: expected a positive integer, got '
                              f'{self.workers!r}')
        if self.slurm_time < 1:
            raise ConfigError(f'--slurm-time: expected a positive number of minutes, '
                              f'got {self.slurm_time!r}')
        if self.slurm_gpus < 0 or self.slurm_cpus < 1:
            raise ConfigError('--slurm-gpus: expected 0 or more, --slurm-cpus: 1 or '
                              f'more (got {self.slurm_gpus}, {self.slurm_cpus})')


class Executor:
    """Runs :class:`Task` s with :func:`run_cell`; :meth:`run` yields ``(task,
    outcome)`` as each finishes (in any order)."""

    #: cells that run at the same time (for the time-left estimate).
    parallel: int = 1

    def run(self, tasks: Sequence[Task]) -> Iterator[Tuple[Task, Dict[str, Any]]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor holds (processes, a Ray cluster it started)."""

    def describe(self) -> str:
        return type(self).__name__


def _died(task: Task, what: str) -> Dict[str, Any]:
    return {'status': 'failed', 'error': f'{what} (the cell is resumed from its last '
                                         f'checkpoint by the next run of the command)'}


class LocalExecutor(Executor):
    """This machine: one process (``workers=1``, today's behaviour) or a pool of
    ``workers`` processes, each with one GPU or ``cores // workers`` threads."""

    def __init__(self, workers: int = 1, devices: Optional[Sequence[str]] = None
                 ) -> None:
        self.workers = workers
        self.parallel = workers
        self.devices = list(devices) if devices is not None else _gpus()
        self._pool = None

    def describe(self) -> str:
        if self.workers == 1:
            return 'local, 1 worker (this process)'
        per = (f'one GPU each ({",".join(self.devices)}) and ' if self.devices else
               '') + f'{self.threads} CPU thread(s) each'
        return f'local, {self.workers} worker processes, {per}'

    @property
    def threads(self) -> int:
        return 0 if self.workers == 1 else max(1, cpu_cores() // self.workers)

    def run(self, tasks):
        if self.workers == 1:
            for task in tasks:
                yield task, run_cell(task)
            return
        import concurrent.futures as cf
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool
        if self._pool is None:
            ctx = mp.get_context('spawn')  # no fork of a process holding torch threads
            slots = ctx.Queue()
            for i in range(self.workers):
                slots.put(i)
            self._pool = cf.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(slots, self.devices))
        for task in tasks:
            task.threads = self.threads
        futures = {self._pool.submit(run_cell, t): t for t in tasks}
        broken = False
        try:
            for future in cf.as_completed(futures):
                task = futures[future]
                try:
                    yield task, future.result()
                except BrokenProcessPool:
                    broken = True
                    yield task, _died(task, 'a worker process died')
                except Exception as e:  # noqa: BLE001 - reported per cell
                    yield task, {'status': 'failed',
                                 'error': f'{type(e).__name__}: {first_line(e)}'}
        finally:
            if broken:
                self.close()  # a broken pool takes no more work

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _gpus() -> List[str]:
    """The GPUs of this machine (their ``CUDA_VISIBLE_DEVICES`` names), if torch
    sees any."""
    import torch
    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible:
        return [v.strip() for v in visible.split(',') if v.strip()][:n]
    return [str(i) for i in range(n)]


def _init_worker(slots, devices) -> None:
    """A pool process: its slot decides its GPU (round robin over ``devices``)."""
    slot = slots.get()
    if devices:
        os.environ['CUDA_VISIBLE_DEVICES'] = devices[slot % len(devices)]


class RayExecutor(Executor):
    """Ray tasks: a local cluster with ``workers`` CPUs (``ray.init()``), or the
    cluster at ``address`` (then ``workers`` tasks in flight, each reserving the
    cluster's CPUs / ``workers``); one GPU per task where the cluster has GPUs.
    Every node needs ``mambarec_pyg`` importable and the data at the same path."""

    def __init__(self, workers: int = 1, address: Optional[str] = None) -> None:
        try:
            import ray
        except ImportError:
            raise ImportError("--executor ray needs Ray: pip install "
                              "'mambarec-pyg[ray]'") from None
        self.ray = ray
        self.workers = workers
        self.parallel = workers
        self._started = False
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = dict(include_dashboard=False,
                                          log_to_driver=False,
                                          configure_logging=False)
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers, **kwargs)
            self._started = True
        gpus = int(ray.cluster_resources().get('GPU', 0))
        self.gpu = gpus > 0
        cpus = int(ray.cluster_resources().get('CPU', 1))
        self.threads = max(1, cpus // max(1, workers))
        # a task reserves the CPUs its run's threads use
        self._remote = ray.remote(num_cpus=self.threads,
                                  num_gpus=1 if self.gpu else 0,
                                  max_retries=0)(run_cell)

    def describe(self) -> str:
        return (f'ray, {self.workers} task(s) at once, '
                + ('one GPU and ' if self.gpu else '') + f'{self.threads} thread(s) each')

    def run(self, tasks):
        ray = self.ray
        queue = list(tasks)
        for task in queue:
            task.threads = self.threads
        running: Dict[Any, Task] = {}
        while queue or running:
            while queue and len(running) < self.workers:
                task = queue.pop(0)
                running[self._remote.remote(task)] = task
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                task = running.pop(ref)
                try:
                    yield task, ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    yield task, {'status': 'failed', 'error': first_line(
                        e.cause if getattr(e, 'cause', None) else e)}
                except ray.exceptions.RayError as e:  # a worker or node lost
                    yield task, _died(task, f'the Ray worker was lost '
                                            f'({type(e).__name__})')

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


class SlurmExecutor(Executor):
    """A Slurm job array through ``submitit`` (its logs in ``folder``), at most
    ``workers`` tasks at once (``--array=...%workers``)."""

    def __init__(self, folder: Path, options: ExecutorOptions, name: str = 'mambarec'
                 ) -> None:
        try:
            import submitit
        except ImportError:
            raise ImportError("--executor slurm needs submitit: pip install "
                              "'mambarec-pyg[slurm]'") from None
        self.submitit = submitit
        self.options = options
        self.parallel = options.workers
        cluster = None if options.slurm_cluster == 'slurm' else options.slurm_cluster
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: Dict[str, Any] = dict(
            timeout_min=options.slurm_time, cpus_per_task=options.slurm_cpus,
            gpus_per_node=options.slurm_gpus, name=name,
            slurm_array_parallelism=options.workers)
        if options.slurm_partition:
            params['slurm_partition'] = options.slurm_partition
        if options.slurm_mem_gb:
            params['mem_gb'] = options.slurm_mem_gb
        if options.slurm_account:
            params['slurm_account'] = options.slurm_account
        if options.slurm_extra:
            params['slurm_additional_parameters'] = dict(options.slurm_extra)
        self.executor.update_parameters(**params)
        self.threads = options.slurm_cpus

    def describe(self) -> str:
        o = self.options
        return (f'slurm ({o.slurm_cluster}), job array of at most {o.workers} '
                f'task(s) at once, {o.slurm_cpus} CPU(s)'
                + (f' and {o.slurm_gpus} GPU(s)' if o.slurm_gpus else '') + ' each'
                + (f', partition {o.slurm_partition}' if o.slurm_partition else ''))

    def run(self, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        for task in tasks:
            task.threads = self.threads
        jobs = self.executor.map_array(run_cell, tasks)
        pending = dict(zip(jobs, tasks))
        while pending:
            done = [j for j in pending if j.done()]
            if not done:
                time.sleep(0.5)
                continue
            for job in done:
                task = pending.pop(job)
                try:
                    yield task, job.result()
                except Exception as e:  # noqa: BLE001 - a failed or lost job
                    yield task, _died(task, f'Slurm job {job.job_id}: '
                                            f'{type(e).__name__}: {first_line(e)}')


def make_executor(options: ExecutorOptions, folder: Path, name: str = 'mambarec'
                  ) -> Executor:
    """The executor ``options`` name (``folder``: where Slurm logs go)."""
    if options.kind == 'ray':
        return RayExecutor(options.workers, options.ray_address)
    if options.kind == 'slurm':
        return SlurmExecutor(folder, options, name)
    return LocalExecutor(options.workers)
