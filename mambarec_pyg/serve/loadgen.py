"""Driving a running service: a local server process and concurrent HTTP clients.

What the integration tests, the soak test and ``benchmarks/serve.py`` share:

* :class:`LocalServer` -- ``mambarec serve DIR`` in a subprocess on a free loopback
  port, ready once ``GET /health`` answers; its resident memory; SIGHUP; stop;
* :func:`run_load` -- ``clients`` threads, each with its own keep-alive ``httpx``
  client, sending requests until a count or a duration is reached, timing each
  one and checking each answer; :class:`LoadResult` has the throughput, latency
  percentiles and every failure.

Needs httpx (extra ``serve``).
"""
from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ['LocalServer', 'LoadResult', 'run_load', 'free_port', 'rss_bytes']

#: ``request(n) -> (method, path, json body or None)`` for the ``n``-th request.
RequestFn = Callable[[int], Tuple[str, str, Any]]
#: ``check(n, status, answer) -> None`` or a message saying what is wrong.
CheckFn = Callable[[int, int, Any], Optional[str]]


def _httpx():
    try:
        import httpx
    except ImportError:
        raise ImportError("the load generator needs httpx: pip install "
                          "'mambarec-pyg[serve]'") from None
    return httpx


def free_port(host: str = '127.0.0.1') -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of process ``pid`` (Linux ``/proc``, else psutil if
    installed, else ``None``)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
        return int(psutil.Process(pid).memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or the process gone
        return None


class LocalServer:
    """``mambarec serve DIR`` in a subprocess on ``127.0.0.1`` (a context manager).

    Args:
        directory: the export directory.
        args: more ``mambarec serve`` options (e.g. ``['--index', 'faiss-flat']``).
        startup_timeout: seconds to wait for ``GET /health``.
        env: extra environment variables.
        lean: run ``python -m mambarec_pyg.serve`` (no torch) instead of
            ``python -m mambarec_pyg.cli serve``.

    The server's output goes to :attr:`log_path` (:meth:`log` reads it).
    """

    def __init__(self, directory: Union[str, Path], args: Sequence[str] = (),
                 startup_timeout: float = 120.0,
                 env: Optional[Dict[str, str]] = None, lean: bool = False) -> None:
        self.command = (['-m', 'mambarec_pyg.serve'] if lean else
                        ['-m', 'mambarec_pyg.cli', 'serve'])
        self.directory = str(directory)
        self.args = list(args)
        self.startup_timeout = startup_timeout
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault('OMP_NUM_THREADS', '1')
        self.process: Optional[subprocess.Popen] = None
        fd, path = tempfile.mkstemp(prefix='mambarec-serve-', suffix='.log')
        os.close(fd)
        self.log_path = Path(path)
        self.port = 0

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.port}'

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """What the server has printed so far."""
        return self.log_path.read_text(errors='replace')

    def start(self) -> 'LocalServer':
        httpx = _httpx()
        for attempt in range(3):  # another process may take the port meanwhile
            self.port = free_port()
            with open(self.log_path, 'ab') as log:
                self.process = subprocess.Popen(
                    [sys.executable, *self.command, self.directory,
                     '--host', '127.0.0.1', '--port', str(self.port), *self.args],
                    stdout=log, stderr=subprocess.STDOUT, env=self.env)
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    if httpx.get(self.url + '/health', timeout=5).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            if self.process.poll() is None:
                self.stop()
                raise RuntimeError(f'mambarec serve did not answer /health within '
                                   f'{self.startup_timeout} s; its log:\n{self.log()}')
            if 'address already in use' not in self.log().lower():
                break
        raise RuntimeError(f'mambarec serve exited with status '
                           f'{self.process.returncode}; its log:\n{self.log()}')

    def sighup(self) -> None:
        """Ask the server to reload (SIGHUP)."""
        os.kill(self.pid, signal.SIGHUP)

    def rss(self) -> Optional[int]:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def __enter__(self) -> 'LocalServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        try:
            self.log_path.unlink()
        except OSError:
            pass


@dataclass
class LoadResult:
    """What :func:`run_load` measured (latencies in milliseconds)."""

    #: requests sent (answered or not).
    requests: int
    seconds: float
    latencies_ms: np.ndarray
    failures: List[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return len(self.failures)

    @property
    def throughput(self) -> float:
        """Requests answered per second."""
        return self.requests / self.seconds if self.seconds > 0 else float('nan')

    def percentile(self, q: float) -> float:
        if self.latencies_ms.size == 0:
            return float('nan')
        return float(np.percentile(self.latencies_ms, q))

    def as_dict(self) -> Dict[str, Any]:
        return {'requests': self.requests, 'errors': self.errors,
                'seconds': round(self.seconds, 3),
                'throughput_rps': round(self.throughput, 1),
                'p50_ms': round(self.percentile(50), 3),
                'p90_ms': round(self.percentile(90), 3),
                'p99_ms': round(self.percentile(99), 3),
                'max_ms': round(float(self.latencies_ms.max()), 3)
                if self.latencies_ms.size else float('nan'),
                'first_failures': self.failures[:5]}


def run_load(url: str, request: RequestFn, *, clients: int = 16,
             requests: Optional[int] = None, duration: Optional[float] = None,
             check: Optional[CheckFn] = None, timeout: float = 60.0,
             stop: Optional[threading.Event] = None) -> LoadResult:
    """Send requests from ``clients`` concurrent threads until ``requests`` have been
    sent, ``duration`` seconds have passed or ``stop`` is set (whichever comes
    first).

    A request fails when it raises (connection error, timeout), answers a status
    other than 200, or ``check(n, status, answer)`` returns a message.
    """
    if requests is None and duration is None and stop is None:
        raise ValueError('run_load: give requests, duration or stop')
    httpx = _httpx()
    counter = itertools.count()
    begun = [0.0]  # set once every client is ready: the clock starts then
    sent = [0] * clients
    latencies: List[List[float]] = [[] for _ in range(clients)]
    failures: List[List[str]] = [[] for _ in range(clients)]
    start_line = threading.Barrier(clients + 1,
                                   action=lambda: begun.__setitem__(0, time.monotonic()))

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout) as http:
            start_line.wait()
            deadline = None if duration is None else begun[0] + duration
            while True:
                n = next(counter)
                if (requests is not None and n >= requests) or (
                        deadline is not None and time.monotonic() >= deadline) or (
                        stop is not None and stop.is_set()):
                    return
                method, path, body = request(n)
                sent[c] += 1
                t0 = time.perf_counter()
                try:
                    response = http.request(method, path, json=body)
                    status = response.status_code
                    answer = response.json()
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    failures[c].append(f'request {n} {method} {path}: '
                                       f'{type(e).__name__}: {e}')
                    continue
                latencies[c].append((time.perf_counter() - t0) * 1e3)
                problem = (f'status {status}: {answer}' if status != 200 else
                           check(n, status, answer) if check is not None else None)
                if problem:
                    failures[c].append(f'request {n} {method} {path}: {problem}')

    threads = [threading.Thread(target=client, args=(c, ), daemon=True)
               for c in range(clients)]
    for t in threads:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    lat = np.asarray([x for per in latencies for x in per], dtype=np.float64)
    return LoadResult(sum(sent), seconds, lat, [f for per in failures for f in per])
