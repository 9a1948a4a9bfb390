"""The run directory: one contract for what it holds, and one process at a time.

A run directory (``mambarec train --output DIR``, an experiment's cell, a grid point)
holds ``config.yaml``, ``last.pt`` (everything needed to resume), ``best.pt`` (the best
epoch's weights), ``results.json`` (the run's record) and ``train.log``
(:class:`~mambarec_pyg.train.recorder.RunRecorder` writes them). What those files mean
is decided here, once, for the trainer's ``resume``, the experiment runner and the grid
search alike:

* **finished** -- ``results.json`` records a final status (:data:`FINAL_STATUSES`) and
  ``best.pt`` exists (:func:`finished_record`);
* **a record** -- ``results.json`` as a dictionary, or ``None`` when it is missing or
  unreadable (:func:`read_record`);
* **settings that never change a result** -- :data:`IGNORED`, and ``data.root`` (where
  the files are, not what they hold);
* **resuming** from ``last.pt`` -- only :data:`RESUMABLE_CHANGES` may differ from the
  checkpoint's settings, and the data must have the checkpoint's shape
  (:func:`check_resume`);
* **continuing a finished run** -- under :data:`CONTINUABLE` changes only, and never to
  fewer epochs than it trained (:func:`finished_run`);
* **differences** -- :func:`config_diffs` names each field (``train.batch_size``) with
  its old and new value (:class:`ConfigDiff`); a run of another model is named by
  ``model.name`` alone (the fields of two models do not compare);
* **the data** -- a checkpoint records the fingerprint of its data
  (:mod:`~mambarec_pyg.data.fingerprint`); a resume on data with another fingerprint
  stops, naming what changed;
* **a new run in a directory that holds an earlier one** (``--overwrite``) leaves the
  earlier run's files (:data:`RUN_RECORD`) as they are until it writes its first
  checkpoint or results, and then removes them first (:func:`remove_earlier_run`), so
  a run stopped before then leaves the directory as it was, and a directory never
  mixes two runs' files;
* **leftover temporaries** -- a process killed while writing leaves the hidden
  temporary of an atomic write (``.last.pt.XXXXXXXX.tmp``, up to the size of the
  file); the run that next owns the directory removes those of :data:`WRITTEN`, and
  nothing else (:func:`remove_leftover_temporaries`).

:class:`RunLock` holds an exclusive :func:`fcntl.flock` on ``DIR/.lock`` (with the
owner's pid and host written in it) for as long as a run writes to ``DIR``. The
operating system releases the lock when the process ends, however it ends, so a lock
left by a crashed or killed run is never stale: the next run simply takes it. A second
process asking for a held lock stops at once with :class:`RunDirectoryBusy`, naming
the owner.

This module needs nothing but the standard library and :mod:`mambarec_pyg.errors`, so
a process that only holds a lock imports no torch.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

try:
    from ..errors import ConfigError, RunDirectoryBusy
    from ..io import leftover_temporaries
except ImportError:  # this file loaded on its own (a process that only holds a lock)
    from mambarec_pyg.errors import ConfigError, RunDirectoryBusy
    from mambarec_pyg.io import leftover_temporaries

__all__ = ['RunLock', 'RunDirectoryBusy', 'holds_run', 'RUN_FILES', 'FINAL_STATUSES',
           'IGNORED', 'CONTINUABLE', 'RESUMABLE_CHANGES', 'ConfigDiff',
           'config_diffs', 'read_record', 'finished_record', 'finished_run',
           'check_resume', 'WRITTEN', 'HISTORY_FILES', 'RUN_RECORD', 'remove_leftover_temporaries',
           'earlier_run_files', 'remove_earlier_run']

PathLike = Union[str, os.PathLike]

#: The files whose presence means a directory holds a run.
RUN_FILES = ('last.pt', 'best.pt', 'results.json')
#: Every epoch's values, as CSV and JSON lines (:mod:`~mambarec_pyg.train.tracking`).
HISTORY_FILES = ('metrics.csv', 'metrics.jsonl')
#: The files a run writes atomically (whose temporaries a killed run can leave).
WRITTEN = RUN_FILES + ('config.yaml', ) + HISTORY_FILES
#: Everything a run records in its directory (what a new run there replaces).
RUN_RECORD = WRITTEN + ('train.log', )
#: The statuses of a finished run in ``results.json`` (the others: ``'running'``,
#: ``'interrupted'``, ``'diverged'``).
FINAL_STATUSES = ('early_stopped', 'max_epochs', 'evaluated')
#: Options that never change what a run computes.
IGNORED = ('train.device', 'train.eval_batch_size', 'train.num_threads',
           'train.deterministic', 'train.checkpoint_interval_s', 'train.distributed',
           'train.distributed_timeout_s')
#: Options a finished run may be continued under (it then trains on).
CONTINUABLE = ('train.max_epochs', 'train.patience', 'train.patience_warmup')
#: Options that may change when a run is resumed from ``last.pt``; any other
#: difference stops the resume with a message naming the field.
RESUMABLE_CHANGES = CONTINUABLE + IGNORED
# where the data files are, not what they hold
_LOCATION = ('data.root', )
# left None, these take the model's protocol; a run records the value it used
_PROTOCOL = ('train.lr_decay', 'train.weight_decay')
_SECTIONS = ('data', 'model', 'train')
# what a resumed run's data must share with the checkpoint's
_SHAPE = ('num_users', 'num_items', 'num_train_interactions')


def holds_run(directory: PathLike) -> bool:
    """Whether ``directory`` already holds a run (a checkpoint or results)."""
    return any((Path(directory) / name).exists() for name in RUN_FILES)


# ---------------------------------------------------------------------------------
# Settings: what differs, named by field
# ---------------------------------------------------------------------------------
class ConfigDiff(NamedTuple):
    """One setting that differs between a recorded run and the current config (a
    named ``(field, old, new)`` tuple)."""

    #: the dotted option name, ``section.field`` (``train.batch_size``).
    field: str
    #: the recorded value and the current one (``None`` where absent).
    old: Any
    new: Any

    def describe(self, where: str = 'in the checkpoint') -> str:
        """``"train.batch_size: 128 in the checkpoint, 64 now"``."""
        return f'{self.field}: {self.old!r} {where}, {self.new!r} now'


def config_diffs(old: Mapping[str, Any], new: Mapping[str, Any],
                 ignore: Sequence[str] = IGNORED) -> List[ConfigDiff]:
    """The fields in which two configs (as plain dictionaries, ``Config.to_dict()``)
    differ, in section and field order.

    ``ignore`` (dotted names) and ``data.root`` are not compared; nor are
    :data:`_PROTOCOL` options left ``None`` in ``new`` (they take the model's protocol,
    whose value ``old`` records). Lists and tuples compare by their items.
    """
    diffs = []
    for section in _SECTIONS:
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            dotted = f'{section}.{key}'
            if dotted in ignore or dotted in _LOCATION:
                continue
            if dotted in _PROTOCOL and b.get(key) is None:
                continue
            if _plain(a.get(key)) != _plain(b.get(key)):
                diffs.append(ConfigDiff(dotted, a.get(key), b.get(key)))
    return diffs


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------------------------
# Records: results.json, finished runs
# ---------------------------------------------------------------------------------
def read_record(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The run's ``results.json``, or ``None`` when it is missing or not a JSON
    object (e.g. cut short)."""
    path = Path(directory) / 'results.json'
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    return record if isinstance(record, dict) else None


def finished_record(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The record of the finished run in ``directory`` (a final status and a
    ``best.pt``), else ``None``."""
    record = read_record(directory)
    if record is None or record.get('status') not in FINAL_STATUSES or \
            not (Path(directory) / 'best.pt').is_file():
        return None
    return record


def finished_run(directory: PathLike, config: Any
                 ) -> Tuple[Optional[Dict[str, Any]], bool]:
    """``(record, continue)`` for a finished run in ``directory`` to be run with
    ``config`` (a :class:`~mambarec_pyg.config.Config` or its ``to_dict()``):
    ``(None, False)`` when there is none; ``continue`` when it should train on (it was
    recorded with other :data:`CONTINUABLE` settings and did not stop early before
    either limit).

    Raises:
        ConfigError: the finished run used other settings, or more epochs than
            ``config`` allows (a run is never cut back); the message names each field.
    """
    record = finished_record(directory)
    if record is None:
        return None, False
    now = config.to_dict() if hasattr(config, 'to_dict') else config
    diffs = config_diffs(record.get('config') or {}, now)
    trained = int(record.get('epochs') or 0)
    hard = [d for d in diffs if d.field not in CONTINUABLE or
            (d.field == 'train.max_epochs' and d.new < trained)]
    if hard:
        text = '; '.join(d.describe('there') for d in hard)
        raise ConfigError(f'{directory} holds a finished run with other settings '
                          f'({text}); use another --output, or remove that directory '
                          f'to run it again')
    status = record.get('status')
    if status == 'evaluated' or (status == 'early_stopped' and
                                 {d.field for d in diffs} <= {'train.max_epochs'}):
        return record, False  # nothing to train, or it stopped before either limit
    return record, bool(diffs)


def check_resume(path: PathLike, saved: Mapping[str, Any], *,
                 config: Optional[Mapping[str, Any]], train: Mapping[str, Any],
                 dataset: Mapping[str, Any], model_name: Optional[str],
                 fingerprint: Optional[Mapping[str, Any]] = None) -> None:
    """Stop, naming each field, if a run would continue from the checkpoint ``saved``
    (read from ``path``) with other settings or other data than it was written with.

    Args:
        config: the run's whole config (``Config.to_dict()``), or ``None`` for a run
            given only its train section (then only the train fields the checkpoint
            records are compared).
        train: the run's train section (``to_dict(TrainConfig)``), its protocol
            resolved.
        dataset: the data's shape (``num_users``, ``num_items``,
            ``num_train_interactions``).
        model_name: the model's registered name.
        fingerprint: the data's fingerprint
            (:func:`~mambarec_pyg.data.fingerprint.data_fingerprint`), compared with
            the checkpoint's when both exist.

    Raises:
        ConfigError: anything but :data:`RESUMABLE_CHANGES` differs, or the data or
            the model do; nothing on disk has changed.
    """
    recorded = saved.get('config')
    if config is not None and isinstance(recorded, dict):
        diffs = config_diffs(recorded, config, ignore=RESUMABLE_CHANGES)
    else:
        old = saved.get('train_config') or {}
        diffs = config_diffs({'train': old},
                             {'train': {k: v for k, v in train.items() if k in old}},
                             ignore=RESUMABLE_CHANGES)
    other_model = bool(saved.get('model_name') and model_name and
                       saved['model_name'] != model_name)
    if other_model or any(d.field == 'model.name' for d in diffs):
        # another model: its fields do not compare with the recorded model's, and
        # the model's name is the one difference to report about it (once)
        diffs = [d for d in diffs if not d.field.startswith('model.')]
        old_name = saved.get('model_name') or (recorded or {}).get('model', {}).get(
            'name')
        new_name = model_name or (config or {}).get('model', {}).get('name')
        diffs.insert(0, ConfigDiff('model.name', old_name, new_name))
    messages = [d.describe() for d in diffs]
    shape = saved.get('dataset') or {}
    messages += [f'dataset {key}: {shape[key]} in the checkpoint, {dataset[key]} now'
                 for key in _SHAPE if key in shape and shape[key] != dataset[key]]
    recorded_data = saved.get('data_fingerprint')
    if fingerprint is not None and isinstance(recorded_data, Mapping) and not any(
            m.startswith('dataset ') for m in messages):
        try:
            from ..data.fingerprint import fingerprint_changes
        except ImportError:  # pragma: no cover - this file loaded on its own
            from mambarec_pyg.data.fingerprint import fingerprint_changes
        changes = fingerprint_changes(recorded_data, fingerprint) or []
        messages += [f'data {change}' for change in changes]
    if messages:
        raise ConfigError(
            f'{path}: cannot resume with different settings (' + '; '.join(messages)
            + '); only ' + ', '.join(RESUMABLE_CHANGES) + ' may change. Use the '
            "checkpoint's settings, or start a new run (--overwrite or another "
            '--output); nothing was changed on disk')


# ---------------------------------------------------------------------------------
# The files of a run: leftovers of a killed write, an earlier run's record
# ---------------------------------------------------------------------------------
def remove_leftover_temporaries(directory: PathLike) -> List[Path]:
    """Remove the temporaries of the atomic writes of :data:`WRITTEN` that a killed
    process left in ``directory`` (``.last.pt.XXXXXXXX.tmp``: the pattern of
    :func:`~mambarec_pyg.io.atomic_path`, regular files only); return them.

    Call it only while holding the directory's :class:`RunLock`: a live writer's
    temporary looks the same.
    """
    removed = []
    for name in WRITTEN:
        for path in leftover_temporaries(Path(directory) / name):
            try:
                path.unlink()
            except FileNotFoundError:  # pragma: no cover - gone meanwhile
                continue
            removed.append(path)
    return removed


def earlier_run_files(directory: PathLike) -> List[str]:
    """The names of :data:`RUN_RECORD` present in ``directory`` (a run's record that
    a new run there replaces)."""
    return [name for name in RUN_RECORD
            if os.path.lexists(Path(directory) / name)]


def remove_earlier_run(directory: PathLike, keep: Sequence[str] = ()) -> List[str]:
    """Remove an earlier run's record (:data:`RUN_RECORD`, but the names in ``keep``)
    from ``directory``, where a new run is about to write its own: ``results.json``
    first, so that the directory never looks like a finished run while the rest goes,
    then the checkpoints, ``config.yaml`` and ``train.log``. Returns the names
    removed; other files are left alone."""
    order = ('results.json', 'best.pt', 'last.pt', 'config.yaml', 'train.log')
    removed = []
    for name in order + tuple(n for n in RUN_RECORD if n not in order):
        if name in keep:
            continue
        path = Path(directory) / name
        if os.path.lexists(path) and not path.is_dir():
            path.unlink()
            removed.append(name)
    return removed


# ---------------------------------------------------------------------------------
# One process at a time
# ---------------------------------------------------------------------------------
class RunLock:
    """Exclusive ownership of a run directory (a context manager).

    Args:
        directory: the run directory (created if missing).
    """

    NAME = '.lock'

    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._fd: Optional[int] = None

    def acquire(self) -> 'RunLock':
        if self._fd is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            self._fd = fd
            return self
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 200).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            raise RunDirectoryBusy(
                f'{self.directory} is in use by another run ({owner}); wait for it '
                f'to finish or choose another --output') from None
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()}\n'.encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # pragma: no cover
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
