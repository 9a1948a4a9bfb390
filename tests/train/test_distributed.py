"""Data parallelism (``mambarec_pyg.train.distributed``): the launch read from the
environment, the slicing of a global batch, the batch reductions against plain
computations, and -- on real gloo process groups of 2 and 3 processes on this CPU
-- the uneven differentiable gather, the collectives of ``DistributedStep``, and one
epoch of every registered trainable model giving the same weights as one process.

The process groups are started once per group size (``distributed_worker.py``, with
the environment torchrun sets) and loop over all models inside.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import distributed_worker as worker
from support import default_dtype, random_batch

from mambarec_pyg.config import RESUMABLE_CHANGES, ConfigError, TrainConfig
from mambarec_pyg.data.sampling import BatchShard, BPRBatch
from mambarec_pyg.models import get_config_class, list_models
from mambarec_pyg.nn.losses import bpr_loss, emb_loss, stacked_square_mean
from mambarec_pyg.train.distributed import (DistributedError, Launch, detect_launch,
                                            shard_batch, shard_bounds, shard_sizes,
                                            wants_distributed)
from mambarec_pyg.train.experiment import build_model
from mambarec_pyg.train.step import TrainingStep

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(worker.__file__).resolve()

#: every registered model (the built-in ones and the tests' own), so that a model
#: added later is covered.
MODELS = list_models()
#: models that cannot be trained on several processes with the same result, with
#: the reason. Empty: every trainable model is equivalent.
NOT_EQUIVALENT = {}

#: (processes, global batch size): 777 training pairs on ``tiny``. With 2
#: processes, B = 97 (odd: shards of 49 and 48) leaves a last batch of 1 triple (one
#: process gets none); with 3, B = 155 (not divisible by 3: 52/52/51) leaves a last
#: batch of 2 (shards 1/1/0).
GROUPS = {2: 97, 3: 155}
#: the gradient synchronisations run by each group.
SYNCS = {2: ('allreduce', 'ddp'), 3: ('allreduce', 'ddp')}


# ---------------------------------------------------------------------------------
# The launch and the configuration
# ---------------------------------------------------------------------------------
def test_no_torchrun_means_one_process():
    assert detect_launch({}) is None
    assert not wants_distributed('auto', None)
    one = detect_launch({'RANK': '0', 'WORLD_SIZE': '1'})
    assert one == Launch(0, 1, 0, 1, '127.0.0.1', 29500)
    assert not wants_distributed('auto', one)


def test_torchrun_environment_is_read():
    env = {'RANK': '5', 'WORLD_SIZE': '8', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '4',
           'MASTER_ADDR': 'node0', 'MASTER_PORT': '29400'}
    launch = detect_launch(env)
    assert launch == Launch(5, 8, 1, 4, 'node0', 29400)
    assert wants_distributed('auto', launch)
    assert not wants_distributed('off', launch)
    with pytest.raises(ValueError, match="train.distributed: expected 'auto' or "
                       "'off', got 'on'"):
        wants_distributed('on', launch)


@pytest.mark.parametrize('env, message', [
    ({'RANK': '0'}, 'WORLD_SIZE: not set although RANK is'),
    ({'RANK': 'x', 'WORLD_SIZE': '2'}, "RANK: expected an integer, got 'x'"),
    ({'RANK': '2', 'WORLD_SIZE': '2'}, r'RANK: expected an integer in \[0, '
                                       r'WORLD_SIZE=2\), got 2'),
    ({'RANK': '0', 'WORLD_SIZE': '0'}, 'WORLD_SIZE: expected an integer >= 1, got 0'),
    ({'RANK': '1', 'WORLD_SIZE': '2', 'MASTER_PORT': '1'}, 'MASTER_ADDR: not set'),
    ({'RANK': '1', 'WORLD_SIZE': '2', 'MASTER_ADDR': 'a'}, 'MASTER_PORT: not set'),
    ({'RANK': '1', 'WORLD_SIZE': '2', 'MASTER_ADDR': 'a', 'MASTER_PORT': '70000'},
     r'MASTER_PORT: expected a port in \[1, 65535\], got 70000'),
    ({'RANK': '1', 'WORLD_SIZE': '4', 'LOCAL_RANK': '2', 'LOCAL_WORLD_SIZE': '2',
      'MASTER_ADDR': 'a', 'MASTER_PORT': '1'}, r'LOCAL_RANK: expected an integer in '
                                               r'\[0, LOCAL_WORLD_SIZE=2\), got 2'),
])
def test_a_broken_launch_environment_names_the_variable(env, message):
    with pytest.raises(DistributedError, match=message):
        detect_launch(env)


def test_the_distributed_option_is_validated_and_may_change_on_resume():
    assert TrainConfig().distributed == 'auto'
    assert TrainConfig(distributed='off').distributed == 'off'
    with pytest.raises(ConfigError, match="train.distributed: expected one of 'auto', "
                       "'off', got 'yes'"):
        TrainConfig(distributed='yes')
    assert 'train.distributed' in RESUMABLE_CHANGES


# ---------------------------------------------------------------------------------
# Slicing a global batch
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize('world_size', [1, 2, 3, 4, 7])
@pytest.mark.parametrize('num_rows', [0, 1, 2, 3, 5, 97, 155, 2048])
def test_shards_are_the_slices_of_tensor_split(num_rows, world_size):
    rows = torch.arange(num_rows)
    want = torch.tensor_split(rows, world_size)
    assert shard_sizes(num_rows, world_size) == [t.numel() for t in want]
    for rank in range(world_size):
        start, stop = shard_bounds(num_rows, world_size, rank)
        assert torch.equal(rows[start:stop], want[rank])


def test_shard_bounds_check_their_arguments():
    with pytest.raises(ValueError, match=r'rank: expected an integer in \[0, 2\), '
                       r'got 2'):
        shard_bounds(5, 2, 2)
    with pytest.raises(ValueError, match='world_size: expected >= 1, got 0'):
        shard_sizes(5, 0)


def test_shard_batch_keeps_the_global_batch_size(tiny_data):
    batch = random_batch(tiny_data, 11, nominal_size=16)
    parts = [shard_batch(batch, r, 3) for r in range(3)]
    assert [p.users.numel() for p in parts] == [4, 4, 3]
    for r, part in enumerate(parts):
        assert part.size == 16 and part.nominal_size == 16
        assert part.num_global == 11 and part.shard.rank == r
        assert (part.shard.start, part.shard.stop) == shard_bounds(11, 3, r)
    for k in range(3):
        assert torch.equal(torch.cat([p[k] for p in parts]), batch[k])
    with pytest.raises(ValueError, match='already a shard'):
        shard_batch(parts[0], 0, 3)


# ---------------------------------------------------------------------------------
# The reductions of the loss functions on simulated shards (one process)
# ---------------------------------------------------------------------------------
def _simulated_shards(batch: BPRBatch, world_size: int, global_rows=None):
    """Each process's shard of ``batch``, with a gather that returns
    ``global_rows`` -- what the collective would give -- after checking that the
    process passed its own rows of it: a loss's value per process, without
    processes."""
    out = []
    for r in range(world_size):
        start, stop = shard_bounds(batch.users.numel(), world_size, r)

        def gather(rows, _start=start, _stop=stop):
            torch.testing.assert_close(rows, global_rows[_start:_stop])
            return global_rows
        shard = BPRBatch(*(t[start:stop] for t in batch), size=batch.size,
                         shard=BatchShard(r, world_size, start, stop,
                                          batch.users.numel(), gather))
        out.append(shard)
    return out


@pytest.mark.parametrize('world_size', [2, 3, 5])
def test_per_triple_losses_average_to_the_global_value(world_size):
    g = torch.Generator().manual_seed(0)
    B, d = 7, 4
    batch = BPRBatch(torch.arange(B), torch.arange(B), torch.arange(B), 8)
    u, i, j = (torch.randn(B, d, generator=g, dtype=torch.float64) for _ in range(3))
    pos, neg = (u * i).sum(1), (u * j).sum(1)
    shards = _simulated_shards(batch, world_size)
    # the mean over the processes of each process's value = the global value
    bpr = [bpr_loss(pos[s.shard.start:s.shard.stop], neg[s.shard.start:s.shard.stop],
                    s) for s in shards]
    plain = np.mean(np.log1p(np.exp(neg.numpy() - pos.numpy())))
    assert float(torch.stack(bpr).mean()) == pytest.approx(plain, rel=1e-12)
    sq = [stacked_square_mean(u[s.shard.start:s.shard.stop],
                              i[s.shard.start:s.shard.stop],
                              j[s.shard.start:s.shard.stop], s) for s in shards]
    plain_sq = (2 * (u.numpy() ** 2).sum() + (i.numpy() ** 2).sum() +
                (j.numpy() ** 2).sum()) / (2 * B * d)
    assert float(torch.stack(sq).mean()) == pytest.approx(plain_sq, rel=1e-12)
    assert float(stacked_square_mean(u, i, j)) == pytest.approx(plain_sq, rel=1e-12)


@pytest.mark.parametrize('world_size', [2, 3, 8])
def test_emb_loss_of_a_shard_is_the_global_norm(world_size):
    """EmbLoss (norms, not squared) couples the rows: every process computes the
    global value from the gathered row norms."""
    g = torch.Generator().manual_seed(1)
    B = 6  # with 8 processes, two get no row
    batch = BPRBatch(torch.arange(B), torch.arange(B), torch.arange(B))
    u, i = torch.randn(B, 4, generator=g, dtype=torch.float64), \
        torch.randn(B, 3, generator=g, dtype=torch.float64)
    full_norms = torch.stack([u.norm(dim=1), i.norm(dim=1)], dim=1)
    shards = _simulated_shards(batch, world_size, full_norms)
    plain = (np.linalg.norm(u.numpy()) + np.linalg.norm(i.numpy())) / B
    for s in shards:
        value = emb_loss(u[s.shard.start:s.shard.stop], i[s.shard.start:s.shard.stop],
                         batch=s)
        assert float(value) == pytest.approx(plain, rel=1e-12)
    assert float(emb_loss(u, i)) == pytest.approx(plain, rel=1e-12)
    assert float(emb_loss(u, i, batch=batch)) == pytest.approx(plain, rel=1e-12)


def test_one_process_losses_are_unchanged_by_the_batch_argument():
    """Without a shard the reductions are the plain ones, bit for bit."""
    g = torch.Generator().manual_seed(2)
    u, i, j = (torch.randn(9, 5, generator=g) for _ in range(3))
    batch = BPRBatch(torch.arange(9), torch.arange(9), torch.arange(9), 16)
    pos, neg = (u * i).sum(1), (u * j).sum(1)
    assert torch.equal(bpr_loss(pos, neg, batch), bpr_loss(pos, neg))
    assert torch.equal(emb_loss(u, i, j, batch=batch), emb_loss(u, i, j))
    assert torch.equal(stacked_square_mean(u, i, j, batch), stacked_square_mean(u, i, j))


# ---------------------------------------------------------------------------------
# Process groups
# ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _launch(out: Path, world_size: int, args) -> None:
    """Start ``world_size`` worker processes as torchrun would and wait for them
    (retrying once on a port taken in between)."""
    for attempt in range(2):
        port = _free_port()
        procs, logs = [], []
        for rank in range(world_size):
            env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size),
                       LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
                       MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port),
                       OMP_NUM_THREADS='1',
                       PYTHONPATH=os.pathsep.join(
                           [str(ROOT), os.environ.get('PYTHONPATH', '')]))
            log = open(out / f'rank{rank}.log', 'w+')
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out),
                                           *map(str, args)], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=str(ROOT)))
        try:
            for p in procs:
                p.wait(timeout=400)
        except subprocess.TimeoutExpired:
            pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        texts = []
        for log in logs:
            log.seek(0)
            texts.append(log.read())
            log.close()
        if all(p.returncode == 0 for p in procs):
            return
        if attempt == 0 and any('address already in use' in t.lower() for t in texts):
            continue
        tails = '\n'.join(f'--- rank {r} (exit {p.returncode}) ---\n{t[-3000:]}'
                          for r, (p, t) in enumerate(zip(procs, texts)))
        pytest.fail(f'the {world_size} worker processes failed:\n{tails}')


_TRAINABLE = {}


def _trainable(name: str, data) -> bool:
    if name not in _TRAINABLE:
        with default_dtype(torch.float64):
            _TRAINABLE[name] = build_model(data, get_config_class(name)()).trainable
    return _TRAINABLE[name]


@pytest.fixture(scope='module')
def groups(tiny_data, tmp_path_factory):
    """Run each process group once over all trainable models (and, with 3
    processes, the collective checks); returns ``{world_size: output folder}``."""
    trainable = [n for n in MODELS if _trainable(n, tiny_data)
                 and n not in NOT_EQUIVALENT]
    out = {}
    for world_size, batch_size in GROUPS.items():
        folder = tmp_path_factory.mktemp(f'group{world_size}')
        extra = ['--collectives'] if world_size == 3 else []
        _launch(folder, world_size, [batch_size, ','.join(SYNCS[world_size]),
                                     ','.join(trainable), *extra])
        out[world_size] = folder
    return out


@pytest.fixture(scope='module')
def collectives(groups):
    world_size = 3
    return [torch.load(groups[world_size] / f'collectives-{r}.pt')
            for r in range(world_size)]


def test_uneven_gather_values_and_gradients(collectives):
    """gather_rows against the plain computation: every process receives the global
    rows in order; the gradient of a process's rows is the sum over the processes of
    d f_s / d rows (f_s each process's own function of the gathered rows)."""
    world_size = len(collectives)
    for n in worker.GATHER_ROWS:
        x, c = worker.gather_inputs(n, world_size)
        x_np = x.numpy()
        # d/dX sum_s [sum(X * C_s) + (s + 1) / 10 * sum(X^3)]
        grad = sum(c[s].numpy() + (s + 1) / 10 * 3 * x_np ** 2
                   for s in range(world_size))
        for r, seen in enumerate(collectives):
            gathered, local_grad = seen[f'gather{n}']
            np.testing.assert_array_equal(gathered.numpy(), x_np)
            start, stop = shard_bounds(n, world_size, r)
            assert local_grad is not None or start == stop
            if local_grad is not None:
                np.testing.assert_allclose(local_grad.numpy(), grad[start:stop],
                                           rtol=1e-12, atol=1e-12)


def test_step_collectives_agree(collectives):
    world_size = len(collectives)
    ranks = np.arange(world_size)
    for seen in collectives:
        # reduce: the mean over the processes
        np.testing.assert_allclose(seen['reduce'].numpy(),
                                   [np.mean(ranks + 1.0), np.mean(2.0 * ranks)])
        # finite everywhere -> True; NaN on the last process -> False on every one
        assert seen['finite'] == (True, False)
        assert seen['object'] == {'stop': True, 'from': 0}
        # a replica changed on the last process: every process learns it
        assert f"the model replicas differ from rank 0's on rank(s) " \
            f"{world_size - 1}" in seen['out_of_sync']
        assert 'dense gradients only' in seen['sparse']


def _reference(name: str, data, batch_size: int):
    return worker.train_one_epoch(name, data, batch_size, TrainingStep)


_REFERENCES = {}


@pytest.mark.parametrize('world_size', sorted(GROUPS))
@pytest.mark.parametrize('name', MODELS)
def test_one_epoch_on_several_processes_equals_one_process(name, world_size, groups,
                                                           tiny_data):
    """The weights after one epoch (float64), and the loss parts averaged over the
    processes, equal one process's on the same global batches (relative 1e-6), for
    each gradient synchronisation."""
    if name in NOT_EQUIVALENT:
        pytest.fail(f'{name} is not equivalent on several processes: '
                    f'{NOT_EQUIVALENT[name]}')
    if not _trainable(name, tiny_data):
        pytest.skip(f'{name} has no parameters to train')
    batch_size = GROUPS[world_size]
    key = (name, batch_size)
    if key not in _REFERENCES:
        _REFERENCES[key] = _reference(name, tiny_data, batch_size)
    want, want_losses = _REFERENCES[key]
    with default_dtype(torch.float64):
        from mambarec_pyg.utils import seed_everything
        seed_everything(worker.SEED)
        initial = build_model(tiny_data, get_config_class(name)()).state_dict()
    moved = [k for k, v in want.items() if v.is_floating_point()
             and not torch.equal(v, initial[k])]
    assert moved, f'{name}: one epoch changed no weight; the comparison would be empty'
    for sync in SYNCS[world_size]:
        got = torch.load(groups[world_size] / f'{name}-{sync}.pt')
        assert got['state'].keys() == want.keys()
        for k, v in want.items():
            w = got['state'][k]
            if not v.is_floating_point():
                assert torch.equal(w, v), (sync, k)
                continue
            scale = max(float(v.abs().max()), 1e-12) if v.numel() else 1.0
            err = float((w - v).abs().max()) / scale if v.numel() else 0.0
            assert err <= 1e-6, f'{name} ({sync}, {world_size} processes): {k} ' \
                f'differs by {err:.3g} (relative)'
        np.testing.assert_allclose(got['losses'].numpy(), want_losses.numpy(),
                                   rtol=1e-6, atol=1e-12)
