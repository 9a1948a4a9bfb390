r"""Data parallelism with :mod:`torch.distributed`: one run on several processes
started by ``torchrun``, with results that do not depend on their number.

What is split and what is replicated:

* **split:** each *global* batch of ``train.batch_size`` BPR triples -- drawn once per
  epoch from the run's seed exactly as on one process -- is cut into contiguous
  slices, one per process (:func:`shard_bounds`, the slicing of
  :func:`torch.tensor_split`: the first ``B % W`` processes get one row more; a
  process may get no row on a short last batch). Each process computes the loss of
  its slice (:class:`~mambarec_pyg.data.sampling.BPRBatch` with a
  :class:`~mambarec_pyg.data.sampling.BatchShard`);
* **replicated:** the model (every parameter and buffer: embedding tables, feature
  tables, the propagation graphs) and therefore every whole-graph computation of
  the forward and backward pass, the optimiser state, and every random number the
  model draws for whole tables (dropout masks, Gumbel noise, FREEDOM's pruned
  edges): each process draws the same sequence from the same seed, so these agree
  without communication.

The rule that makes the result independent of the number of processes :math:`W`
(the model's side of it is written in :class:`~mambarec_pyg.data.sampling.BPRBatch`
and :class:`~mambarec_pyg.models.Recommender`): a loss term that is a mean or sum
over the triples is, on each process, its share times :math:`W`, so the mean over
the processes is the global value; a term that couples the triples (in-batch
InfoNCE, MMD) is computed by every process on the rows of the whole batch, gathered
with :func:`gather_rows`, whose backward pass sums every process's gradient for a
process's rows (:math:`W` times the global one). In both cases the *mean* of the
processes' gradients is the single-process gradient of the global batch;
:class:`DistributedStep` computes that mean (``DistributedDataParallel``'s gradient
hooks, or one bucketed all-reduce after the backward pass) before the optimiser
step, so every process applies the same update and the replicas stay identical.

Set-up: :func:`detect_launch` reads the environment ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`init_distributed` starts the process group -- NCCL with one
CUDA device per local rank, gloo on the CPU -- with a collective timeout
(:data:`DEFAULT_TIMEOUT_S`): a collective that waits longer for a lost or stuck
process fails with an error instead of hanging. The timeout must exceed the longest
time one process may work alone while the others wait (rank 0's evaluation and
checkpoint writing: ``train.distributed_timeout_s``).

The trainer on several processes is :mod:`~mambarec_pyg.train.parallel`.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..data.sampling import BatchShard, BPRBatch
from ..errors import DistributedError
from .step import TrainingStep

__all__ = ['DistributedError', 'Launch', 'DistributedContext', 'DistributedStep',
           'detect_launch', 'wants_distributed', 'init_distributed', 'shard_bounds',
           'shard_sizes', 'shard_batch', 'gather_rows', 'DEFAULT_TIMEOUT_S',
           'SYNC_MODES', 'writer_rank', 'refuse_launch']

#: Seconds a collective waits for the other processes before it fails (the
#: ``timeout`` of :func:`torch.distributed.init_process_group`).
DEFAULT_TIMEOUT_S = 300.0

#: How :class:`DistributedStep` averages the gradients over the processes.
SYNC_MODES = ('allreduce', 'ddp')

# The variables torchrun sets for every process it starts.
_REQUIRED = ('RANK', 'WORLD_SIZE')




# ---------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """What ``torchrun`` told this process (:func:`detect_launch`)."""

    #: this process's rank in ``[0, world_size)``.
    rank: int
    #: the number of processes of the run, on all nodes.
    world_size: int
    #: this process's rank on its node (its CUDA device).
    local_rank: int
    #: the number of processes on this node.
    local_world_size: int
    #: address and port of the rank-0 store (``env://`` rendezvous).
    master_addr: str
    master_port: int


def _int_var(environ: Mapping[str, str], name: str, default: Optional[int] = None,
             low: int = 0) -> int:
    value = environ.get(name)
    if value is None:
        if default is None:
            raise DistributedError(f'environment variable {name}: not set (torchrun '
                                   f'sets it for every process it starts)')
        return default
    try:
        number = int(value)
    except ValueError:
        raise DistributedError(f'environment variable {name}: expected an integer, '
                               f'got {value!r}') from None
    if number < low:
        raise DistributedError(f'environment variable {name}: expected an integer '
                               f'>= {low}, got {number}')
    return number


def detect_launch(environ: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """The launch ``torchrun`` describes in the environment, or ``None`` when this
    process was not started by it (neither ``RANK`` nor ``WORLD_SIZE`` set).

    Raises:
        DistributedError: the variables are incomplete or inconsistent (naming the
            variable and what was expected).
    """
    env = os.environ if environ is None else environ
    present = [name for name in _REQUIRED if name in env]
    if not present:
        return None
    if len(present) != len(_REQUIRED):
        missing = [n for n in _REQUIRED if n not in env]
        raise DistributedError(f'environment variable {missing[0]}: not set although '
                               f'{present[0]} is (start the processes with torchrun)')
    world = _int_var(env, 'WORLD_SIZE', low=1)
    rank = _int_var(env, 'RANK')
    if rank >= world:
        raise DistributedError(f'environment variable RANK: expected an integer in '
                               f'[0, WORLD_SIZE={world}), got {rank}')
    local_world = _int_var(env, 'LOCAL_WORLD_SIZE', default=world, low=1)
    local_rank = _int_var(env, 'LOCAL_RANK', default=rank % local_world)
    if local_rank >= local_world:
        raise DistributedError(f'environment variable LOCAL_RANK: expected an integer '
                               f'in [0, LOCAL_WORLD_SIZE={local_world}), got '
                               f'{local_rank}')
    addr = env.get('MASTER_ADDR', '127.0.0.1' if world == 1 else None)
    if addr is None:
        raise DistributedError('environment variable MASTER_ADDR: not set (torchrun '
                               'sets it; with several nodes give --rdzv-endpoint)')
    port = _int_var(env, 'MASTER_PORT', default=29500 if world == 1 else None, low=1)
    if port > 65535:
        raise DistributedError(f'environment variable MASTER_PORT: expected a port '
                               f'in [1, 65535], got {port}')
    return Launch(rank, world, local_rank, local_world, addr, port)


def wants_distributed(mode: str, launch: Optional[Launch]) -> bool:
    """Whether ``train.distributed`` = ``mode`` (``'auto'`` | ``'off'``) trains on
    several processes under ``launch``: ``'auto'`` with a launch of two or more."""
    if mode not in ('auto', 'off'):
        raise ValueError(f"train.distributed: expected 'auto' or 'off', got {mode!r}")
    return mode == 'auto' and launch is not None and launch.world_size > 1


def writer_rank(mode: str = 'auto', environ: Optional[Mapping[str, str]] = None
                ) -> bool:
    """Whether this process prints and writes: ``True`` unless it is a process
    other than rank 0 of a data-parallel run (``torchrun`` with two or more
    processes and ``train.distributed`` = ``mode`` = ``'auto'``)."""
    launch = detect_launch(environ)
    return not wants_distributed(mode, launch) or launch.rank == 0


def refuse_launch(what: str, environ: Optional[Mapping[str, str]] = None) -> None:
    """Stop with a :class:`~mambarec_pyg.errors.ConfigError` when ``torchrun``
    started this process among two or more: ``what`` (a grid search, an
    experiment: many runs with their own files) is not run data-parallel."""
    from ..errors import ConfigError
    launch = detect_launch(environ)
    if launch is not None and launch.world_size > 1:
        raise ConfigError(
            f'{what} does not run under torchrun ({launch.world_size} processes were '
            f'started): every process would run all of its runs in the same '
            f'directories. Start it without torchrun (each run then trains on one '
            f'process), or train single runs data-parallel with torchrun ... -m '
            f'mambarec_pyg.cli train')


def _launch_device(device: str, launch: Launch) -> torch.device:
    """The device of this process: one CUDA device per local rank."""
    from ..config import ConfigError
    device = str(device)
    if device == 'cpu':
        return torch.device('cpu')
    if device == 'auto' and not torch.cuda.is_available():
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device: {device!r} requested but CUDA is not "
                          f"available; use 'cpu' or 'auto'")
    if device.startswith('cuda:'):
        if launch.local_world_size > 1:
            raise ConfigError(f"train.device: {device!r} names one device, but this "
                              f"node runs {launch.local_world_size} processes; use "
                              f"'cuda' or 'auto' (process LOCAL_RANK uses cuda:"
                              f"LOCAL_RANK)")
        return torch.device(device)
    count = torch.cuda.device_count()
    if launch.local_rank >= count:
        raise ConfigError(f'train.device: local rank {launch.local_rank} needs '
                          f'cuda:{launch.local_rank}, but this node has {count} CUDA '
                          f'device(s); start at most {count} processes per node '
                          f'(torchrun --nproc-per-node)')
    return torch.device('cuda', launch.local_rank)


# ---------------------------------------------------------------------------------
# Process group
# ---------------------------------------------------------------------------------
class DistributedContext:
    """The process group of a run (from :func:`init_distributed`): rank, world size,
    device, and the small collectives the trainer needs. A context manager; leaving
    it (or :meth:`close`) destroys the groups it created.

    Attributes:
        rank, world_size, local_rank: as in :class:`Launch`.
        device: this process's device.
        backend: ``'nccl'`` or ``'gloo'``.
        group: the group of the gradient and agreement collectives (the default
            group).
        gather_group: a second group of the same processes for the gathers inside
            the loss, so their backward-pass collectives never interleave with
            ``DistributedDataParallel``'s gradient buckets.
        timeout_s: the collective timeout.
    """

    def __init__(self, rank: int, world_size: int, local_rank: int,
                 device: torch.device, backend: str, group, gather_group,
                 timeout_s: float, owns_group: bool) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = device
        self.backend = backend
        self.group = group
        self.gather_group = gather_group
        self.timeout_s = float(timeout_s)
        self._owns_group = owns_group

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the process that writes and prints)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (within the timeout)."""
        import torch.distributed as dist
        _collective('barrier', lambda: dist.barrier(group=self.group), self)

    def broadcast_object(self, obj, src: int = 0):
        """``obj`` of rank ``src`` on every process (a picklable value, e.g. the
        early-stopping decision)."""
        import torch.distributed as dist
        box = [obj]
        _collective('broadcast_object',
                    lambda: dist.broadcast_object_list(box, src=src, group=self.group,
                                                       device=self._object_device()),
                    self)
        return box[0]

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` is true on every process (the same answer on each)."""
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        _collective('all_true', lambda: dist.all_reduce(t, op=dist.ReduceOp.MIN,
                                                        group=self.group), self)
        return bool(t.item() > 0.5)

    def _object_device(self):
        return self.device if self.backend == 'nccl' else None

    def close(self) -> None:
        """Destroy the process groups this context created (idempotent)."""
        import torch.distributed as dist
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> 'DistributedContext':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f'DistributedContext(rank={self.rank}/{self.world_size}, '
                f'device={self.device}, backend={self.backend!r}, '
                f'timeout_s={self.timeout_s:g})')


def _collective(what: str, fn, ctx: Optional[DistributedContext] = None):
    """Run a collective; a failure (a lost process, the timeout) becomes a
    :class:`DistributedError` naming the operation and this rank."""
    try:
        return fn()
    except DistributedError:
        raise
    except RuntimeError as e:
        if ctx is None:
            raise
        raise DistributedError(
            f'rank {ctx.rank} of {ctx.world_size}: {what} failed (another process '
            f'stopped, or did not answer within the collective timeout of '
            f'{ctx.timeout_s:g} s): {e}') from e


def init_distributed(launch: Launch, device: str = 'auto',
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistributedContext:
    """Join the process group of ``launch`` (``env://`` rendezvous at
    ``MASTER_ADDR:MASTER_PORT``).

    Args:
        launch: from :func:`detect_launch`.
        device: ``train.device``: ``'auto'`` (the local rank's CUDA device when CUDA
            is present, else the CPU), ``'cpu'``, ``'cuda'`` (the local rank's) or
            ``'cuda:N'`` (only with one process per node).
        timeout_s: the collective timeout in seconds (> 0).

    The backend is NCCL on CUDA and gloo on the CPU. An already initialised default
    group (set up by the caller) is used as it is and left alone by
    :meth:`DistributedContext.close`.
    """
    import torch.distributed as dist
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s)
            and timeout_s > 0):
        raise ValueError(f'timeout_s: expected a number of seconds > 0, got '
                         f'{timeout_s!r}')
    if not dist.is_available():
        raise DistributedError('torch.distributed is not available in this PyTorch '
                               'build')
    dev = _launch_device(device, launch)
    backend = 'nccl' if dev.type == 'cuda' else 'gloo'
    if dev.type == 'cuda':
        torch.cuda.set_device(dev)
    timeout = datetime.timedelta(seconds=float(timeout_s))
    owns = not dist.is_initialized()
    if owns:
        os.environ.setdefault('MASTER_ADDR', launch.master_addr)
        os.environ.setdefault('MASTER_PORT', str(launch.master_port))
        kwargs = {'device_id': dev} if dev.type == 'cuda' else {}
        try:
            dist.init_process_group(backend, init_method='env://', rank=launch.rank,
                                    world_size=launch.world_size, timeout=timeout,
                                    **kwargs)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f'rank {launch.rank} of {launch.world_size}: could not join the '
                f'process group at {launch.master_addr}:{launch.master_port} '
                f'within {timeout_s:g} s: {e}') from e
    else:
        if dist.get_world_size() != launch.world_size or \
                dist.get_rank() != launch.rank:
            raise DistributedError(
                f'the initialised process group has rank {dist.get_rank()} of '
                f'{dist.get_world_size()}, the environment says {launch.rank} of '
                f'{launch.world_size}')
        backend = str(dist.get_backend())
    gather_group = dist.new_group(backend=backend, timeout=timeout)
    return DistributedContext(launch.rank, launch.world_size, launch.local_rank, dev,
                              backend, dist.group.WORLD, gather_group,
                              float(timeout_s), owns)


# ---------------------------------------------------------------------------------
# Shards and gathers
# ---------------------------------------------------------------------------------
def shard_sizes(num_rows: int, world_size: int) -> List[int]:
    """Rows of each process for a batch of ``num_rows``: :func:`torch.tensor_split`'s
    sizes, the first ``num_rows % world_size`` processes one more."""
    if world_size < 1:
        raise ValueError(f'world_size: expected >= 1, got {world_size}')
    if num_rows < 0:
        raise ValueError(f'num_rows: expected >= 0, got {num_rows}')
    base, extra = divmod(int(num_rows), int(world_size))
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_bounds(num_rows: int, world_size: int, rank: int) -> Tuple[int, int]:
    """``(start, stop)``: the rows of process ``rank`` (see :func:`shard_sizes`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f'rank: expected an integer in [0, {world_size}), got {rank}')
    sizes = shard_sizes(num_rows, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def gather_rows(rows: Tensor, sizes: Sequence[int], group=None) -> Tensor:
    r"""Differentiable all-gather of rows whose number differs between processes.

    Process :math:`r` holds ``rows`` ``[sizes[r], ...]``; every process receives
    ``[sum(sizes), ...]``: the processes' rows in rank order. Each process's rows
    are padded with zeros to ``max(sizes)`` (the collectives need equal shapes),
    gathered with :func:`torch.distributed.all_gather` and trimmed. Backward: the
    gradient of a process's rows is the **sum** over the processes of the gradient
    each computed for them (padded the same way and reduce-scattered on NCCL;
    all-reduced and sliced on other backends; padding rows get none).

    Written out rather than :func:`torch.distributed.nn.functional.all_gather`
    (the same forward pass and gradient), which PyTorch 2.13 deprecates and whose
    backward pass on gloo is one scatter per process.

    Args:
        rows: this process's rows, ``[sizes[rank], *]`` (same trailing shape and
            dtype on every process).
        sizes: every process's number of rows, in rank order (the same list on
            every process).
        group: the process group (default: the default group).
    """
    import torch.distributed as dist
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    sizes = [int(n) for n in sizes]
    if len(sizes) != world:
        raise ValueError(f'gather_rows: expected {world} sizes (one per process), got '
                         f'{len(sizes)}')
    if rows.size(0) != sizes[rank]:
        raise ValueError(f'gather_rows: rank {rank} holds {rows.size(0)} rows, '
                         f'sizes says {sizes[rank]}')
    if max(sizes) == 0:  # nothing to gather (every process knows it)
        return rows
    return _GatherRows.apply(rows, sizes, rank, group)


def _padded(rows: Tensor, n: int) -> Tensor:
    if rows.size(0) == n:
        return rows.contiguous()
    return torch.cat([rows, rows.new_zeros((n - rows.size(0), *rows.shape[1:]))])


class _GatherRows(torch.autograd.Function):
    """The collective of :func:`gather_rows`."""

    @staticmethod
    def forward(ctx, rows: Tensor, sizes: List[int], rank: int, group) -> Tensor:
        import torch.distributed as dist
        ctx.sizes, ctx.rank, ctx.group = sizes, rank, group
        most = max(sizes)
        padded = _padded(rows, most)
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist
        sizes, rank, group = ctx.sizes, ctx.rank, ctx.group
        most = max(sizes)
        pieces = grad.split(sizes)
        full = torch.cat([_padded(piece, most) for piece in pieces])
        if dist.get_backend(group) == 'nccl':
            out = full.new_empty((most, *full.shape[1:]))
            # (reduce_scatter_single from PyTorch 2.13, which deprecates the old name)
            reduce_scatter = getattr(dist, 'reduce_scatter_single', None) or \
                dist.reduce_scatter_tensor
            reduce_scatter(out, full, group=group)
        else:
            dist.all_reduce(full, group=group)
            out = full[rank * most:(rank + 1) * most]
        return out[:sizes[rank]], None, None, None


class _Gather:
    """The ``gather_fn`` of a :class:`BatchShard`: :func:`gather_rows` with the
    shard's sizes."""

    __slots__ = ('sizes', 'group')

    def __init__(self, sizes: Sequence[int], group) -> None:
        self.sizes, self.group = list(sizes), group

    def __call__(self, rows: Tensor) -> Tensor:
        return gather_rows(rows, self.sizes, self.group)


def shard_batch(batch: BPRBatch, rank: int, world_size: int,
                group=None) -> BPRBatch:
    """This process's slice of the global ``batch``, with its
    :class:`~mambarec_pyg.data.sampling.BatchShard` (the configured batch size
    ``batch.size`` is kept: it is the global one)."""
    if batch.shard is not None:
        raise ValueError(f'shard_batch: the batch is already a shard ({batch.shard!r})')
    num = int(batch.users.numel())
    start, stop = shard_bounds(num, world_size, rank)
    shard = BatchShard(rank, world_size, start, stop, num,
                       _Gather(shard_sizes(num, world_size), group))
    return BPRBatch(*(t[start:stop] for t in batch), size=batch.size, shard=shard)


# ---------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------
class _LossModule(torch.nn.Module):
    """``model.loss`` as a module's ``forward``, so that
    :class:`~torch.nn.parallel.DistributedDataParallel`'s hooks see it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: BPRBatch) -> Dict[str, Tensor]:
        return self.model.loss(batch)


class DistributedStep(TrainingStep):
    r"""The optimisation step on several processes: each computes the loss of its
    slice of the global batch; the gradients are averaged over the processes before
    the optimiser step, so every process applies the same update as one process
    would on the whole batch.

    Args:
        model: the :class:`~mambarec_pyg.models.Recommender` (the same weights on
            every process; :meth:`check_in_sync` verifies it).
        optimizer: the optimiser of its parameters.
        context: the :class:`DistributedContext` (or any object with ``rank``,
            ``world_size``, ``device``, ``group``, ``gather_group``, ``timeout_s``).
        sync: ``'allreduce'`` (default): after the backward pass, one all-reduce
            per bucket of about ``bucket_mb`` MiB of flattened gradients; a
            parameter without a gradient on every process keeps none, as on one
            process. ``'ddp'``: the loss runs inside a
            :class:`~torch.nn.parallel.DistributedDataParallel`-wrapped module, whose
            gradient hooks average the buckets while the backward pass runs
            (parameters that get no gradient need ``find_unused_parameters``).
            Same result; ``benchmarks/distributed.py`` compares their speed. The
            default is ``'allreduce'``: on a CPU with two processes of one thread
            each, DDP's overlap of communication and backward pass did not make it
            faster (the cores are busy with the backward pass either way), and the
            explicit all-reduce needs no ``find_unused_parameters``, no buffer
            handling and no wrapper. On GPUs, where NCCL traffic can overlap the
            backward pass, ``'ddp'`` may be faster (not measured yet).
        bucket_mb: gradient bucket size of both modes.
        find_unused_parameters: passed to ``DistributedDataParallel`` (``'ddp'``);
            ``None`` (default): true for a model whose steps do not all reach every
            parameter (its ``uses_all_parameters`` is false, e.g. LATTICE).

    Dense gradients only (a sparse gradient stops with an error).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 context, sync: str = 'allreduce', bucket_mb: float = 25.0,
                 find_unused_parameters: Optional[bool] = None) -> None:
        super().__init__(model, optimizer)
        if sync not in SYNC_MODES:
            raise ValueError(f'sync: expected one of {", ".join(map(repr, SYNC_MODES))},'
                             f' got {sync!r}')
        if not bucket_mb > 0:
            raise ValueError(f'bucket_mb: expected > 0, got {bucket_mb!r}')
        self.context = context
        self.rank, self.world_size = int(context.rank), int(context.world_size)
        self.sync = sync
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._ddp = None
        if find_unused_parameters is None:
            find_unused_parameters = not getattr(model, 'uses_all_parameters', True)
        if sync == 'ddp':
            import warnings
            from torch.nn.parallel import DistributedDataParallel
            # No buffer broadcasts, not even at the start: the buffers (graphs,
            # feature tables, BatchNorm statistics) are replicated computations,
            # identical on every process, and some are sparse. (PyTorch 2.13
            # deprecates broadcast_buffers for forward_sync_buffers, which still
            # broadcasts at the start.) device_ids=None keeps DDP from re-packing
            # the BPRBatch argument (already on the device).
            with warnings.catch_warnings():
                warnings.filterwarnings('ignore', message='.*broadcast_buffers',
                                        category=FutureWarning)
                self._ddp = DistributedDataParallel(
                    _LossModule(model), device_ids=None, process_group=context.group,
                    broadcast_buffers=False, bucket_cap_mb=bucket_mb,
                    find_unused_parameters=find_unused_parameters)

    # -- the seam ---------------------------------------------------------------------
    def shard(self, batch: BPRBatch) -> BPRBatch:
        """This process's slice of the global ``batch``."""
        return shard_batch(batch, self.rank, self.world_size,
                           self.context.gather_group)

    def forward(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """The loss parts of this process's slice of the global ``batch`` (a
        per-triple part is the slice's share times the number of processes; the mean
        over the processes is the global batch's value, :meth:`reduce`)."""
        local = self.shard(batch)
        if self._ddp is not None:
            return self._ddp(local)
        return self.model.loss(local)

    def update(self, parts: Dict[str, Tensor]) -> None:
        """Backpropagate, average the gradients over the processes, apply the
        optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        parts['total'].backward()
        if self._ddp is None:
            _collective('gradient all-reduce', self._average_gradients, self.context)
        self.optimizer.step()

    def reduce(self, values: Tensor) -> Tensor:
        """The mean over the processes of ``values`` (logged loss parts or their
        sums): the global batch's values, the same on every process."""
        import torch.distributed as dist
        out = values.detach().clone()
        _collective('reduce', lambda: dist.all_reduce(out, group=self.context.group),
                    self.context)
        return out.div_(self.world_size)

    def all_finite(self, values: Tensor) -> bool:
        """Whether ``values`` is finite on every process -- one answer, the same on
        each, so that all processes stop together on a non-finite loss."""
        import torch.distributed as dist
        flag = torch.isfinite(values).all().to(torch.float32).reshape(1)
        _collective('finiteness check',
                    lambda: dist.all_reduce(flag, op=dist.ReduceOp.MIN,
                                            group=self.context.group), self.context)
        return bool(flag.item() > 0.5)

    # -- gradients --------------------------------------------------------------------
    def _average_gradients(self) -> None:
        import torch.distributed as dist
        group = self.context.group
        params = self.params
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=self.context.device)
        # which parameters got a gradient on some process (as a single process on
        # the whole batch would have)
        dist.all_reduce(has, group=group)
        used = [p for p, n in zip(params, has.tolist()) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            elif p.grad.is_sparse:
                raise DistributedError(f'a parameter of shape {tuple(p.shape)} has a '
                                       f'sparse gradient; data parallelism supports '
                                       f'dense gradients only')
        for bucket in _buckets(used, self.bucket_bytes):
            grads = [p.grad for p in bucket]
            if len(grads) == 1 and grads[0].is_contiguous():
                flat = grads[0]
                dist.all_reduce(flat, group=group)
                flat.div_(self.world_size)
                continue
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=group)
            flat.div_(self.world_size)
            offset = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[offset:offset + n].view_as(g))
                offset += n

    def check_in_sync(self) -> None:
        """Raise :class:`DistributedError` on every process unless every process
        holds rank 0's parameters (compared by per-parameter checksums)."""
        import torch.distributed as dist
        ctx = self.context
        names = {id(p): n for n, p in self.model.named_parameters()}
        with torch.no_grad():
            sums = torch.stack([p.detach().double().sum() for p in self.params]) \
                if self.params else torch.zeros(1, dtype=torch.float64)
        ref = sums.clone().to(ctx.device)
        _collective('broadcast', lambda: dist.broadcast(ref, 0, group=ctx.group), ctx)
        bad = (ref.cpu() != sums).nonzero().view(-1)
        flags = torch.zeros(self.world_size, device=ctx.device)
        flags[self.rank] = float(bad.numel() > 0)
        _collective('all_reduce', lambda: dist.all_reduce(flags, group=ctx.group), ctx)
        differing = flags.nonzero().view(-1).tolist()
        if differing:
            mine = (f'; here parameter {names.get(id(self.params[int(bad[0])]))!r} '
                    f'differs' if bad.numel() else '')
            raise DistributedError(
                f'rank {self.rank}: the model replicas differ from rank 0\'s on rank(s) '
                f'{", ".join(map(str, differing))}{mine}; build the model from the '
                f'same seed on every process')


def _buckets(params: Sequence[Tensor], bucket_bytes: int) -> List[List[Tensor]]:
    """Consecutive groups of ``params`` of at most ``bucket_bytes`` each (a larger
    parameter alone), of one dtype and device each."""
    out: List[List[Tensor]] = []
    current: List[Tensor] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        if current and (size + nbytes > bucket_bytes or p.dtype != current[0].dtype
                        or p.device != current[0].device):
            out.append(current)
            current, size = [], 0
        current.append(p)
        size += nbytes
    if current:
        out.append(current)
    return out
