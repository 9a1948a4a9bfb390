r"""The trainer on several processes: one run started by ``torchrun``, with the
result of one process.

:func:`run_distributed` is what :func:`~mambarec_pyg.train.experiment.run` (and so
``mambarec train`` and the examples) does when ``torchrun`` started the process and
``train.distributed`` is ``'auto'``: it joins the process group
(:func:`~mambarec_pyg.train.distributed.init_distributed`, collective timeout
``train.distributed_timeout_s``), lets rank 0 load the data and build the model
first (so that only one process computes and caches the graphs), then every process
builds the same model from the run's seed and trains it with a
:class:`DistributedTrainer`. The process group is kept for the process's later runs
(an ``env://`` rendezvous cannot be repeated on the same port; the first run's
device and timeout hold for them) and destroyed when the process exits.

:class:`DistributedTrainer` is the :class:`~mambarec_pyg.train.trainer.Trainer`
with its seams filled:

* the step is a :class:`~mambarec_pyg.train.distributed.DistributedStep`: each
  process computes its slice of every global batch, the gradients are averaged;
* rank 0 alone takes the run directory's lock, writes the directory and prints
  (``is_writer``); the others start only once it holds the lock;
* rank 0 alone evaluates; the others wait for its answer (a broadcast within the
  collective timeout) and take from it the metrics, the best epoch -- they keep
  their own copy of its weights, which equal rank 0's -- and the patience counter,
  so every process makes the same early-stopping decision (itself broadcast from
  rank 0) and returns the same :class:`~mambarec_pyg.train.trainer.TrainResult`;
  the random states after the evaluation are rank 0's too;
* ``--resume`` works with any number of processes: ``last.pt`` holds no
  per-process state (every process holds the same model, optimiser state and random
  states: those of the one-process run, since every process draws the same
  sequence), and every process reads it;
* Ctrl-C or SIGTERM (``torchrun`` passes either on to every process) stops every
  process the way it stops one: the unfinished epoch is dropped, rank 0 writes
  ``best.pt`` and ``results.json``, ``last.pt`` is kept. A repeated signal while the
  files are written is ignored;
* a process that dies (or is stopped alone) makes the others stop, at the latest
  after the collective timeout, with a :class:`~mambarec_pyg.errors.DistributedError`
  naming the lost rank: every process adds to its own counter in the rendezvous
  store every second (:class:`Heartbeat`), and after a failed collective the
  counters that no longer move name the lost processes (a process stopped by a
  signal says so in the store before it exits). Rank 0 then writes ``best.pt`` and
  ``results.json`` (status ``'interrupted'``, with the message), and ``last.pt``
  stays resumable.
"""
from __future__ import annotations

import contextlib
import random
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import DistributedError, MambaRecError, NonFiniteError
from .distributed import DistributedContext, DistributedStep, Launch, init_distributed
from .process import deterministic_algorithms
from .trainer import Trainer, TrainResult

__all__ = ['DistributedTrainer', 'Heartbeat', 'run_distributed', 'stop_once_on_signals']

#: Seconds between two beats of a :class:`Heartbeat`.
BEAT_S = 1.0


# ---------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------
@contextlib.contextmanager
def stop_once_on_signals():
    """Within the block, the first SIGINT or SIGTERM raises
    :class:`KeyboardInterrupt` and later ones are ignored, so that the files of an
    interrupted run are written even when ``torchrun`` passes a Ctrl-C on as a
    SIGTERM a moment later. Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []

    def stop(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise KeyboardInterrupt(f'signal {signum}')

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------
# Heartbeat
# ---------------------------------------------------------------------------------
class Heartbeat:
    """Each process's sign of life in the rendezvous store, to name a lost process.

    A daemon thread adds 1 to the key ``mambarec/beat/<rank>`` every
    :data:`BEAT_S` seconds (a separate client of the store at
    ``MASTER_ADDR:MASTER_PORT``). :meth:`lost` reads every counter twice, some
    beats apart: the processes whose counter did not move have stopped.
    :meth:`mark` records why this process stops (``'interrupted'``), read by
    :meth:`lost` without waiting. A context manager (starts and stops the thread).
    """

    def __init__(self, launch: Launch, interval_s: float = BEAT_S) -> None:
        self.launch = launch
        self.interval_s = float(interval_s)
        self._store = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def _key(self, kind: str, rank: int) -> str:
        return f'mambarec/{kind}/{rank}'

    def _client(self):
        import datetime
        import torch.distributed as dist
        return dist.TCPStore(self.launch.master_addr, self.launch.master_port,
                             is_master=False, wait_for_workers=False,
                             timeout=datetime.timedelta(seconds=10))

    def start(self) -> 'Heartbeat':
        try:
            self._store = self._client()
            self._store.delete_key(self._key('stopped', self.launch.rank))
            self._store.add(self._key('beat', self.launch.rank), 1)
        except (RuntimeError, OSError):  # no store: lost processes are not named
            self._store = None
            return self
        self._thread = threading.Thread(target=self._beat, name='mambarec-heartbeat',
                                        daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        key = self._key('beat', self.launch.rank)
        while not self._stop.wait(self.interval_s):
            try:
                with self._lock:
                    self._store.add(key, 1)
            except (RuntimeError, OSError):  # the store is gone: nothing to tell
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval_s + 5)
            self._thread = None

    def __enter__(self) -> 'Heartbeat':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self, reason: str) -> None:
        """Record in the store why this process stops (best effort)."""
        if self._store is None:
            return
        try:
            with self._lock:
                self._store.set(self._key('stopped', self.launch.rank), reason)
        except (RuntimeError, OSError):
            pass

    def lost(self) -> Optional[Dict[int, str]]:
        """The other processes that stopped, with why (``'interrupted'`` or
        ``'lost'``); ``None`` when the store cannot be read (the process holding it
        -- rank 0's or ``torchrun``'s -- is gone) or was never reached."""
        if self._store is None:
            return None
        others = [r for r in range(self.launch.world_size) if r != self.launch.rank]
        try:
            with self._lock:
                out = {r: self._store.get(self._key('stopped', r)).decode()
                       for r in others if self._store.check([self._key('stopped', r)])}
                before = {r: self._store.add(self._key('beat', r), 0) for r in others}
            time.sleep(3 * self.interval_s)
            with self._lock:
                after = {r: self._store.add(self._key('beat', r), 0) for r in others}
                for r in others:
                    if r not in out and self._store.check([self._key('stopped', r)]):
                        out[r] = self._store.get(self._key('stopped', r)).decode()
        except (RuntimeError, OSError):
            return None
        for r in others:
            if r not in out and after[r] == before[r]:
                out[r] = 'lost'
        return out

    def explain(self, rank: int, error: BaseException) -> str:
        """A message for a failed collective on ``rank``: which processes stopped."""
        return self.describe(rank, error)[0]

    def describe(self, rank: int, error: BaseException) -> Tuple[str, bool]:
        """``(message, whether another process stopped)`` for ``error`` on
        ``rank`` (:meth:`explain`)."""
        lost = self.lost()
        world = self.launch.world_size
        if lost is None:
            who = (f'the rendezvous store at {self.launch.master_addr}:'
                   f'{self.launch.master_port} no longer answers: the process holding '
                   f'it (rank 0, or torchrun) stopped')
        elif lost:
            parts = [f'rank {r} ' + ('was interrupted (Ctrl-C or SIGTERM)'
                                     if why == 'interrupted' else 'was lost (it '
                                     'exited or was killed)')
                     for r, why in sorted(lost.items())]
            who = '; '.join(parts)
        else:
            who = ('no process was lost, but one did not answer within the collective '
                   'timeout (train.distributed_timeout_s)')
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f'rank {rank} of {world} stopped: {who} ({first})', lost is None or \
            bool(lost)


# ---------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------
class DistributedTrainer(Trainer):
    """The :class:`~mambarec_pyg.train.trainer.Trainer` on one process of a
    data-parallel run (see the module doc).

    Args:
        model, data, config, output_dir: as for the Trainer (the same on every
            process; ``model`` built from the same seed everywhere).
        context: the :class:`~mambarec_pyg.train.distributed.DistributedContext`.
        heartbeat: the process's :class:`Heartbeat` (names a lost process in the
            error; without one the error says only that a collective failed).
        sync: the gradient synchronisation of
            :class:`~mambarec_pyg.train.distributed.DistributedStep`.
        **kwargs: the Trainer's other keyword arguments (``resume``, ``quiet``,
            ``callbacks``, ``data_spec``, ``restore_best``, ``allow_no_valid``).
    """

    def __init__(self, model: torch.nn.Module, data, config=None, output_dir=None, *,
                 context: DistributedContext, heartbeat: Optional[Heartbeat] = None,
                 sync: str = 'allreduce', **kwargs: Any) -> None:
        self.context = context
        self.heartbeat = heartbeat
        self.sync = sync
        super().__init__(model, data, config, output_dir, is_writer=context.is_main,
                         device=context.device,
                         step_factory=lambda m, o: DistributedStep(m, o, context,
                                                                   sync=sync),
                         **kwargs)

    # -- agreement ----------------------------------------------------------------------
    def _agree(self, ok: bool, what: str) -> None:
        """Every process says whether ``what`` went well; a process where it did
        while it failed on another stops with a :class:`DistributedError`."""
        everyone = self.context.all_true(ok)
        if ok and not everyone:
            raise DistributedError(f'rank {self.context.rank}: another process failed '
                                   f'to {what} (its message says why); stopping')

    def enter_run(self, stack: contextlib.ExitStack, deterministic: bool) -> None:
        """Rank 0 takes the run directory's lock, and the others learn whether it
        got it; then deterministic algorithms, and SIGINT/SIGTERM as Ctrl-C (once)."""
        try:
            stack.enter_context(self.recorder.lock())  # (rank 0 only)
        except BaseException:
            with contextlib.suppress(Exception):
                self._agree(False, 'take the run directory lock')
            raise
        self._agree(True, 'take the run directory lock')
        stack.enter_context(deterministic_algorithms(deterministic, self.device))
        stack.enter_context(stop_once_on_signals())

    def _setup(self) -> None:
        try:
            super()._setup()
        except BaseException:
            with contextlib.suppress(Exception):
                self._agree(False, 'start the run')
            raise
        self._agree(True, 'start the run')
        if self.step is not None:
            self.step.check_in_sync()
        ctx = self.context
        self._log(f'data-parallel on {ctx.world_size} processes ({ctx.backend}, '
                  f'{ctx.device.type}): each batch split over them; rank 0 evaluates '
                  f'and writes')

    # -- the seams ----------------------------------------------------------------------
    def should_stop(self) -> bool:
        """Rank 0's early-stopping decision, on every process."""
        return bool(self.context.broadcast_object(super().should_stop()))

    def evaluate_epoch(self, epoch: int
                       ) -> Tuple[Dict[str, float], Optional[Dict[str, float]], float]:
        """Rank 0 evaluates and tells the others the outcome (metrics, whether the
        epoch is the newest best, the patience counter, its random states)."""
        ctx = self.context
        if ctx.is_main:
            try:
                valid, test, value = super().evaluate_epoch(epoch)
            except NonFiniteError as e:
                ctx.broadcast_object(('nonfinite', str(e)))
                raise
            except Exception as e:
                ctx.broadcast_object(('error', f'{type(e).__name__}: {e}'))
                raise
            ctx.broadcast_object(('ok', valid, test, value, self.state.bad_epochs,
                                  _random_states(self.device)))
            return valid, test, value
        answer = ctx.broadcast_object(None)
        if answer[0] == 'nonfinite':
            raise NonFiniteError(answer[1])
        if answer[0] == 'error':
            raise DistributedError(f'rank {ctx.rank}: rank 0 failed while evaluating '
                                   f'epoch {epoch}: {answer[1]}')
        _, valid, test, value, bad_epochs, states = answer
        if test is not None:  # the newest best: this replica's weights are rank 0's
            self.state.set_best(epoch, value, valid, test, self.model)
        self.state.bad_epochs = bad_epochs
        _set_random_states(states, self.device)
        return valid, test, value

    # -- endings ------------------------------------------------------------------------
    def _interrupted(self, total_before: float, start: float) -> TrainResult:
        if self.heartbeat is not None:
            self.heartbeat.mark('interrupted')
        return super()._interrupted(total_before, start)

    def _fit(self) -> TrainResult:
        total_before = self.state.timings.get('total_s', 0.0)
        start = time.perf_counter()
        try:
            return super()._fit()
        except RuntimeError as e:
            if isinstance(e, MambaRecError) and not isinstance(e, DistributedError):
                raise
            if not isinstance(e, DistributedError) and self.heartbeat is None:
                raise
            if self.heartbeat is not None:
                message, stopped = self.heartbeat.describe(self.context.rank, e)
            else:
                message, stopped = str(e), False
            if not (stopped or isinstance(e, DistributedError)):
                raise  # an error of this process, not of the group
            self._after_lost_process(message, total_before, start)
            raise DistributedError(message) from e

    def _after_lost_process(self, message: str, total_before: float,
                            start: float) -> None:
        """Rank 0 keeps what an interruption keeps (``best.pt``, ``results.json``
        with the message; ``last.pt`` as it was)."""
        state, recorder = self.state, self.recorder
        state.timings['total_s'] = total_before + time.perf_counter() - start
        with contextlib.suppress(Exception):
            if recorder.writes and recorder.claimed:
                recorder.write_best(state)
                if self._session_epochs:
                    recorder.write_results('interrupted', state, error=message)
        if self.restore_best:
            with contextlib.suppress(Exception):
                self.load_best()


def _random_states(device: torch.device) -> Dict[str, Any]:
    """Python's, NumPy's and torch's random states (and this CUDA device's)."""
    return {'python': random.getstate(), 'numpy': np.random.get_state(),
            'torch': torch.get_rng_state(),
            'cuda': (torch.cuda.get_rng_state(device) if device.type == 'cuda'
                     else None)}


def _set_random_states(states: Dict[str, Any], device: torch.device) -> None:
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if states['cuda'] is not None and device.type == 'cuda':
        torch.cuda.set_rng_state(states['cuda'], device)


# ---------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------
_GROUP: Optional[DistributedContext] = None


def _process_group(launch: Launch, device: str, timeout_s: float) -> DistributedContext:
    """The process group of this process's runs: started by the first run and kept
    for later runs in the same process (an ``env://`` rendezvous cannot be repeated
    on the same port), destroyed when the process exits."""
    global _GROUP
    if _GROUP is None:
        import atexit
        _GROUP = init_distributed(launch, device, timeout_s)
        atexit.register(_GROUP.close)
    return _GROUP


def run_distributed(launch: Launch, config, output_dir=None, *, resume: bool = False,
                    quiet: bool = False, data=None, model_factory=None,
                    callbacks=()) -> TrainResult:
    """Train ``config``'s model on this process of the ``torchrun`` launch
    ``launch`` (the arguments of :func:`~mambarec_pyg.train.experiment.run`); every
    process returns the same :class:`~mambarec_pyg.train.trainer.TrainResult`.

    Rank 0 loads the data and builds the model first -- preparing, and caching,
    what the model needs -- while the others wait; then they do the same, from the
    same seed.
    """
    from ..data.dataset import data_spec, load_dataset
    from ..utils import seed_everything
    from .experiment import build_model
    cfg = config.train
    factory = model_factory or build_model
    ctx = _process_group(launch, cfg.device, cfg.distributed_timeout_s)
    with Heartbeat(launch) as heartbeat:
        def build():
            loaded = data if data is not None else load_dataset(config.data)
            seed_everything(cfg.seed)
            return loaded, factory(loaded, config.model)

        try:
            if ctx.is_main:
                try:
                    loaded, model = build()
                except BaseException as e:
                    with contextlib.suppress(Exception):
                        ctx.broadcast_object(f'{type(e).__name__}: {e}')
                    raise
                ctx.broadcast_object(None)
            else:
                failed = ctx.broadcast_object(None)
                if failed is not None:
                    raise DistributedError(f'rank {ctx.rank}: rank 0 could not load the '
                                           f'data or build the model: {failed}')
                loaded, model = build()
        except DistributedError as e:
            if 'could not load' in str(e):
                raise
            raise DistributedError(heartbeat.explain(ctx.rank, e)) from e
        trainer = DistributedTrainer(model, loaded, config, output_dir, context=ctx,
                                     heartbeat=heartbeat, resume=resume, quiet=quiet,
                                     callbacks=callbacks,
                                     data_spec=data_spec(config.data, loaded))
        return trainer.fit()
