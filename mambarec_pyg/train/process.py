"""What a training run changes in its process while it runs, and puts back after.

* :func:`deterministic_algorithms` -- ``torch.use_deterministic_algorithms`` for the
  run (bitwise repeatable training on the CPU), then the previous setting;
* :func:`stop_on_sigterm` -- SIGTERM (``kill``, a batch scheduler's stop) stops the run
  the way Ctrl-C does, then the previous handler;
* :func:`thread_policy_note` -- the note printed when OpenMP threads may spin.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

import torch

__all__ = ['deterministic_algorithms', 'stop_on_sigterm', 'thread_policy_note']


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms(enabled)`` (warning where an op has no
    deterministic version) for the block, then restored."""
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
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt`, so a run stops as
    on Ctrl-C (best weights written and restored, results written). Only in the main
    thread, where Python delivers signals."""
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


def thread_policy_note(device: torch.device) -> Optional[str]:
    """The note to print when OpenMP threads may spin while they wait (torch was
    imported before mambarec_pyg could set ``OMP_WAIT_POLICY=PASSIVE``): with other
    work on the cores such runs can train many times slower. ``None`` otherwise."""
    from .. import OMP_POLICY_APPLIED
    if device.type == 'cpu' and torch.get_num_threads() > 1 and not OMP_POLICY_APPLIED:
        return ('note: torch was imported before mambarec_pyg, so its OpenMP threads '
                'spin while they wait; if other work shares the CPU, set '
                'OMP_WAIT_POLICY=PASSIVE in the environment or use '
                '--train.num-threads 1 (benchmarks/threads.py)')
    return None
