"""One process of the data-parallel equivalence tests
(``tests/train/test_distributed.py``).

Started once per process with the environment ``torchrun`` would set (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), it joins a gloo
group and, for every model named on the command line and every gradient
synchronisation mode, trains one epoch on the ``tiny`` data in float64 with
:class:`~mambarec_pyg.train.distributed.DistributedStep` (:func:`train_one_epoch`,
the same loop the test runs on one process with
:class:`~mambarec_pyg.train.step.TrainingStep`). Rank 0 saves the weights and the
reduced loss sums to ``OUT/<model>-<sync>.pt``; every rank checks that its replica
equals rank 0's.

    python tests/distributed_worker.py OUT BATCH_SIZE SYNC[,SYNC] MODEL[,MODEL] \
        [--collectives]

``--collectives`` first runs :func:`collective_checks` (the uneven gather, the
reductions, the agreed finiteness check, the replica check) and saves what each
rank saw to ``OUT/collectives-<rank>.pt``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the tests' shared helpers (the test MF model)
    sys.path.insert(0, str(HERE))

import support  # noqa: E402,F401  (registers the test model 'test_mf')
from support import default_dtype  # noqa: E402

from mambarec_pyg.data.index import training_index  # noqa: E402
from mambarec_pyg.data.sampling import TrainingPairs  # noqa: E402
from mambarec_pyg.models import get_config_class  # noqa: E402
from mambarec_pyg.train.experiment import build_model  # noqa: E402
from mambarec_pyg.train.trainer import make_optimizer  # noqa: E402
from mambarec_pyg.utils import seed_everything  # noqa: E402

SEED = 7
LR = 0.01
#: the collective timeout of the test groups: a failing process stops the others
#: with an error well within the test's own deadline.
TIMEOUT_S = 60.0


def train_one_epoch(name: str, data, batch_size: int, make_step: Callable
                    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """One epoch of model ``name`` (default config, float64) from seed :data:`SEED`
    with the step ``make_step(model, optimizer)``: a minimal version of the
    trainer's loop. Returns ``(state_dict, reduced loss-part sums)``."""
    with default_dtype(torch.float64):
        seed_everything(SEED)
        model = build_model(data, get_config_class(name)())
        protocol = getattr(model, 'protocol', {}) or {}
        opt = make_optimizer(model.parameters(), lr=LR,
                             weight_decay=protocol.get('weight_decay', 0.0))
        step = make_step(model, opt)
        pairs = TrainingPairs(training_index(data))
        generator = torch.Generator().manual_seed(SEED)
        model.train()
        model.on_epoch_start(0)
        names, sums = None, None
        for batch in pairs.epoch(batch_size, generator):
            parts = step.forward(batch)
            if names is None:
                names = sorted(parts)
                sums = torch.zeros(len(names), dtype=torch.float64)
            values = torch.stack([parts[n].detach().double().reshape(()) for n in names])
            if not step.all_finite(values):
                raise RuntimeError(f'{name}: non-finite loss {dict(zip(names, values))}')
            step.update(parts)
            sums += values
        reduced = step.reduce(sums)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, reduced


#: numbers of rows of the global tensors of the gather check (with 3 processes:
#: shards of 2/2/1, 1/1/0, none at all, and 3/2/2 rows).
GATHER_ROWS = (5, 2, 0, 7)


def gather_inputs(num_rows: int, world_size: int):
    """The global rows ``X`` ``[num_rows, 2, 3]`` of the gather check and each
    process's weights ``C_r`` (float64, fixed seeds); process ``r`` computes
    ``f_r = sum(gathered * C_r) + (r + 1) / 10 * sum(gathered ** 3)``."""
    g = torch.Generator().manual_seed(num_rows)
    x = torch.randn(num_rows, 2, 3, generator=g, dtype=torch.float64)
    c = [torch.randn(num_rows, 2, 3, generator=torch.Generator().manual_seed(100 + r),
                     dtype=torch.float64) for r in range(world_size)]
    return x, c


def collective_checks(ctx, out: Path) -> None:
    """What this process sees of the collectives, saved for the test."""
    from mambarec_pyg.train.distributed import (DistributedError, DistributedStep,
                                                gather_rows, shard_bounds,
                                                shard_sizes)
    seen = {}
    for n in GATHER_ROWS:
        x, c = gather_inputs(n, ctx.world_size)
        start, stop = shard_bounds(n, ctx.world_size, ctx.rank)
        local = x[start:stop].clone().requires_grad_()
        gathered = gather_rows(local, shard_sizes(n, ctx.world_size), ctx.gather_group)
        f = (gathered * c[ctx.rank]).sum() + \
            (ctx.rank + 1) / 10 * gathered.pow(3).sum()
        f.backward()
        seen[f'gather{n}'] = (gathered.detach(), local.grad)

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    step = DistributedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), ctx)
    seen['reduce'] = step.reduce(torch.tensor([ctx.rank + 1.0, 2.0 * ctx.rank]))
    nan_on_last = torch.tensor([1.0, math.nan if ctx.rank == ctx.world_size - 1
                                else 0.0])
    seen['finite'] = (step.all_finite(torch.tensor([1.0, 2.0])),
                      step.all_finite(nan_on_last))
    seen['object'] = ctx.broadcast_object({'stop': ctx.rank == 0, 'from': ctx.rank})
    step.check_in_sync()  # same seed: the same replica
    if ctx.rank == ctx.world_size - 1:
        with torch.no_grad():
            model.bias[0] += 1.0
    try:
        step.check_in_sync()
        seen['out_of_sync'] = None
    except DistributedError as e:
        seen['out_of_sync'] = str(e)

    emb = torch.nn.Embedding(4, 2, sparse=True)
    sparse = DistributedStep(emb, torch.optim.SGD(emb.parameters(), lr=0.1), ctx)
    try:
        sparse.update({'total': emb(torch.tensor([ctx.rank % 4])).sum()})
        seen['sparse'] = None
    except DistributedError as e:
        seen['sparse'] = str(e)
    ctx.barrier()
    torch.save(seen, out / f'collectives-{ctx.rank}.pt')


def main(argv) -> int:
    out, batch_size, syncs, names = Path(argv[0]), int(argv[1]), argv[2].split(','), \
        argv[3].split(',')
    torch.set_num_threads(1)
    from mambarec_pyg.data import synthetic_dataset
    from mambarec_pyg.train.distributed import (DistributedStep, detect_launch,
                                                init_distributed)
    launch = detect_launch()
    data = synthetic_dataset('tiny', seed=0)
    with init_distributed(launch, device='cpu', timeout_s=TIMEOUT_S) as ctx:
        if '--collectives' in argv[4:]:
            collective_checks(ctx, out)
        for name in names:
            for sync in syncs:
                t0 = time.perf_counter()
                steps = []

                def make_step(model, opt):
                    steps.append(DistributedStep(model, opt, ctx, sync=sync))
                    return steps[-1]

                state, reduced = train_one_epoch(name, data, batch_size, make_step)
                steps[0].check_in_sync()
                if ctx.rank == 0:
                    tmp = out / f'{name}-{sync}.pt.tmp'
                    torch.save({'state': state, 'losses': reduced,
                                'seconds': time.perf_counter() - t0}, tmp)
                    tmp.rename(out / f'{name}-{sync}.pt')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
