"""A run directory, owned by one process at a time.

:class:`RunLock` holds an exclusive :func:`fcntl.flock` on ``DIR/.lock`` (with the
owner's pid and host written in it) for as long as a run writes to ``DIR``. The
operating system releases the lock when the process ends, however it ends, so a lock
left by a crashed or killed run is never stale: the next run simply takes it. A second
process asking for a held lock stops at once with :class:`RunDirectoryBusy`, naming
the owner.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Optional, Union

__all__ = ['RunLock', 'RunDirectoryBusy', 'holds_run', 'RUN_FILES']

#: The files whose presence means a directory holds a run.
RUN_FILES = ('last.pt', 'best.pt', 'results.json')


def holds_run(directory: Union[str, os.PathLike]) -> bool:
    """Whether ``directory`` already holds a run (a checkpoint or results)."""
    return any((Path(directory) / name).exists() for name in RUN_FILES)


class RunDirectoryBusy(RuntimeError):
    """Another process is running in this directory."""


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
