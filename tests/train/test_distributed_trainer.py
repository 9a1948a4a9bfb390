"""The trainer on several processes (``mambarec_pyg.train.parallel``): whole runs
through :func:`~mambarec_pyg.train.experiment.run` -- what ``mambarec train`` calls
-- on 2 gloo processes of this CPU against 1 process, resume across process counts,
a killed process, SIGTERM to ``torchrun``, and the CLI under ``torchrun``.

The processes are started by the test with the environment ``torchrun`` sets
(``distributed_trainer_worker.py``), or by ``python -m torch.distributed.run``.
Float64 throughout the comparisons: 2 processes average gradients that one process
sums in another order, so the weights agree to rounding (relative 1e-6), not bit for
bit.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import distributed_trainer_worker as worker

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(worker.__file__).resolve()
#: representative models: a graph model without side terms, one with per-epoch
#: random pruning, and MambaRec (gathered InfoNCE and MMD rows).
MODELS = ('lightgcn', 'freedom', 'mambarec')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]))
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR',
                'MASTER_PORT'):
        env.pop(key, None)
    env.update(extra)
    return env


def _start(out: Path, world_size: int, args, port: int):
    procs = []
    for rank in range(world_size):
        env = _env() if world_size == 1 else _env(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR='127.0.0.1',
            MASTER_PORT=str(port))
        log = open(out / f'rank{rank}-{len(list(out.glob("rank*.log")))}.log', 'w+')
        procs.append((subprocess.Popen([sys.executable, str(WORKER), str(out),
                                        *map(str, args)], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=str(ROOT)), log))
    return procs


def _wait(procs, timeout: float = 300):
    """Wait for the processes; returns (exit codes, logs, seconds)."""
    t0 = time.monotonic()
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for _, log in procs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    return [p.returncode for p, _ in procs], texts, time.monotonic() - t0


def _run(out: Path, world_size: int, *args, expect_ok: bool = True):
    """Start ``world_size`` worker processes and wait (retrying once on a port
    taken in between); returns (exit codes, logs)."""
    out.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):
        codes, texts, _ = _wait(_start(out, world_size, args, _free_port()))
        if attempt == 0 and any('address already in use' in t.lower() for t in texts):
            continue
        break
    if expect_ok and any(codes):
        pytest.fail('\n'.join(f'--- rank {r} (exit {c}) ---\n{t[-3000:]}'
                              for r, (c, t) in enumerate(zip(codes, texts))))
    return codes, texts


def _weights(path: Path):
    return torch.load(path, weights_only=False)['model']


def _assert_close_weights(got, want, what: str, rel: float = 1e-6) -> None:
    assert got.keys() == want.keys()
    moved = False
    for k, v in want.items():
        w = got[k]
        if not v.is_floating_point():
            assert torch.equal(w, v), (what, k)
            continue
        assert w.dtype == torch.float64, (what, k, w.dtype)
        if not v.numel():
            continue
        scale = max(float(v.abs().max()), 1e-12)
        err = float((w - v).abs().max()) / scale
        assert err <= rel, f'{what}: {k} differs by {err:.3g} (relative)'
        moved = True
    assert moved


def _assert_same_record(got: dict, want: dict, what: str) -> None:
    for key in ('status', 'best_epoch', 'epochs'):
        assert got[key] == want[key], (what, key)
    for split in ('valid', 'test'):
        assert got[split].keys() == want[split].keys()
        for k, v in want[split].items():
            assert got[split][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (what, k)
    assert len(got['history']) == len(want['history'])
    for g, w in zip(got['history'], want['history']):
        for k, v in w['loss'].items():
            assert g['loss'][k] == pytest.approx(v, rel=1e-6, abs=1e-12), (what, k)


@pytest.fixture(scope='module')
def two_epochs(tmp_path_factory):
    """Two epochs of each of :data:`MODELS` on 1 and on 2 processes."""
    out = {}
    for world_size in (1, 2):
        folder = tmp_path_factory.mktemp(f'trainer{world_size}')
        _run(folder, world_size, ','.join(MODELS), 2)
        out[world_size] = folder
    return out


@pytest.mark.parametrize('name', MODELS)
def test_two_processes_train_the_run_of_one(two_epochs, name):
    """Metrics, per-epoch losses and weights (best.pt, last.pt) of a 2-epoch run on
    2 processes equal those on 1 process (float64, relative 1e-6); rank 0 alone
    wrote the run directory and every process returned the same result."""
    one, two = two_epochs[1] / name, two_epochs[2] / name
    want = json.loads((one / 'results.json').read_text())
    got = json.loads((two / 'results.json').read_text())
    assert want['status'] == 'max_epochs' and want['epochs'] == 2
    _assert_same_record(got, want, name)
    for ckpt in ('best.pt', 'last.pt'):
        _assert_close_weights(_weights(two / ckpt), _weights(one / ckpt),
                              f'{name} {ckpt}')
    outcomes = [json.loads((two_epochs[2] / f'outcome-{r}.json').read_text())[name]
                for r in range(2)]
    assert outcomes[0] == outcomes[1]
    assert outcomes[0]['test'] == got['test']
    log = (two / 'train.log').read_text()
    assert 'data-parallel on 2 processes (gloo' in log
    assert log.count('epoch    1 |') == 1  # one writer


def test_resume_across_process_counts(tmp_path, two_epochs):
    """A run of 3 epochs trained 1 epoch on 1 process, resumed for the 2nd on 2
    processes and for the 3rd on 1 process, ends where an uninterrupted 1-process
    run does (within 1e-6: the 2-process epoch averages the gradients in another
    order; the checkpoint holds no per-process state)."""
    name = 'mambarec'
    staged = tmp_path / 'staged'
    _run(staged, 1, name, 1)
    _run(staged, 2, name, 2, '--resume')
    resumed = json.loads((staged / name / 'results.json').read_text())
    assert resumed['epochs'] == 2
    log = (staged / name / 'train.log').read_text()
    assert 'resumed from' in log and 'data-parallel on 2 processes' in log
    _run(staged, 1, name, 3, '--resume')
    whole = tmp_path / 'whole'
    _run(whole, 1, name, 3)
    want = json.loads((whole / name / 'results.json').read_text())
    got = json.loads((staged / name / 'results.json').read_text())
    assert want['epochs'] == 3
    _assert_same_record(got, want, 'resumed 1 -> 2 -> 1')
    _assert_close_weights(_weights(staged / name / 'last.pt'),
                          _weights(whole / name / 'last.pt'), 'resumed last.pt')
    # the 2-epoch result of the staged run is the 2-process run's of the fixture
    two = json.loads((two_epochs[2] / name / 'results.json').read_text())
    assert resumed['test'] == pytest.approx(two['test'], rel=1e-6)


def test_a_killed_process_stops_the_other_and_the_run_resumes(tmp_path):
    """Rank 1 killed (SIGKILL) in the middle of epoch 1: rank 0 stops well within
    the collective timeout with a message naming rank 1; last.pt holds epoch 0,
    loads, and a resumed run on one process finishes the run."""
    name = 'lightgcn'
    timeout_s = 60
    out = tmp_path / 'killed'
    out.mkdir()
    t0 = time.monotonic()
    codes, texts, _ = _wait(_start(out, 2, [name, 3, '--timeout', timeout_s,
                                            '--kill', '1:13'], _free_port()))
    seconds = time.monotonic() - t0
    assert codes[1] == -9, texts[1][-2000:]
    assert codes[0] == 1, texts[0][-2000:]
    assert seconds < timeout_s
    outcome = json.loads((out / 'outcome-0.json').read_text())
    assert outcome['error'].startswith('DistributedError: rank 0 of 2 stopped: rank 1 '
                                       'was lost'), outcome
    results = json.loads((out / name / 'results.json').read_text())
    assert results['status'] == 'interrupted' and results['epochs'] == 1
    assert 'rank 1 was lost' in results['error']
    last = torch.load(out / name / 'last.pt', weights_only=False)
    assert last['epoch'] == 1  # epoch 0 done; epoch 1 dropped
    _run(out, 1, name, 3, '--resume')
    results = json.loads((out / name / 'results.json').read_text())
    assert results['status'] == 'max_epochs' and results['epochs'] == 3


def test_sigterm_to_torchrun_ends_every_process_and_keeps_the_checkpoint(tmp_path):
    """SIGTERM to the ``torchrun`` agent during epoch 1 (rank 0 sends it): every
    process stops, the run is recorded as interrupted and resumes."""
    name = 'lightgcn'
    out = tmp_path / 'term'
    out.mkdir()
    log = open(out / 'torchrun.log', 'w+')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         '--master_port', str(_free_port()), str(WORKER), str(out), name, '3',
         '--sigterm-parent', '13'], env=_env(), stdout=log, stderr=subprocess.STDOUT,
        cwd=str(ROOT))
    try:
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log.seek(0)
    text = log.read()
    assert proc.returncode != 0, text[-3000:]
    results = json.loads((out / name / 'results.json').read_text())
    assert results['status'] == 'interrupted', text[-3000:]
    assert results['epochs'] == 1
    assert torch.load(out / name / 'last.pt', weights_only=False)['epoch'] == 1
    assert 'interrupted during epoch 1' in (out / name / 'train.log').read_text()
    _run(out, 1, name, 2, '--resume')
    results = json.loads((out / name / 'results.json').read_text())
    assert results['status'] == 'max_epochs' and results['epochs'] == 2


def test_a_busy_run_directory_stops_every_process(tmp_path):
    """Rank 0 cannot take the run directory's lock (another run holds it): it
    stops with the lock's message, and rank 1 learns it and stops too."""
    from mambarec_pyg.train.rundir import RunLock
    name = 'lightgcn'
    out = tmp_path / 'busy'
    (out / name).mkdir(parents=True)
    with RunLock(out / name):
        codes, texts = _run(out, 2, name, 1, expect_ok=False)
    assert codes == [1, 1], texts
    first = json.loads((out / 'outcome-0.json').read_text())['error']
    second = json.loads((out / 'outcome-1.json').read_text())['error']
    assert first.startswith('RunDirectoryBusy'), first
    assert 'rank 1: another process failed to take the run directory lock' in second
    assert not (out / name / 'results.json').exists()


def test_the_cli_trains_under_torchrun(tmp_path):
    """``torchrun -m mambarec_pyg.cli train`` (float32): one result table, printed
    by rank 0, and the metrics of one process."""
    args = ['train', '--model.name', 'lightgcn', '--synthetic', 'tiny',
            '--train.max-epochs', '2', '--train.batch-size', '97',
            '--train.num-threads', '1', '--quiet']
    one = subprocess.run([sys.executable, '-m', 'mambarec_pyg.cli', *args, '--output',
                          str(tmp_path / 'one')], env=_env(), cwd=str(ROOT),
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, '-m', 'torch.distributed.run',
                          '--nproc_per_node=2', '--master_port', str(_free_port()),
                          '-m', 'mambarec_pyg.cli', *args, '--output',
                          str(tmp_path / 'two')], env=_env(), cwd=str(ROOT),
                         capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('results: ') == 1, two.stdout
    want = json.loads((tmp_path / 'one' / 'results.json').read_text())
    got = json.loads((tmp_path / 'two' / 'results.json').read_text())
    assert got['epochs'] == want['epochs'] == 2
    # float32: the rounding of two averaged gradients; the rankings are the same
    for split in ('valid', 'test'):
        for k, v in want[split].items():
            assert got[split][k] == pytest.approx(v, abs=1e-6), (split, k)
    np.testing.assert_allclose(
        [r['loss']['total'] for r in got['history']],
        [r['loss']['total'] for r in want['history']], rtol=1e-5)


def test_search_and_experiments_refuse_torchrun(monkeypatch, tmp_path):
    from mambarec_pyg.errors import ConfigError
    from mambarec_pyg.train.distributed import refuse_launch, writer_rank
    env = {'RANK': '1', 'WORLD_SIZE': '2', 'MASTER_ADDR': 'a', 'MASTER_PORT': '1'}
    with pytest.raises(ConfigError, match='a grid search does not run under torchrun '
                       r'\(2 processes were started\)'):
        refuse_launch('a grid search', env)
    refuse_launch('a grid search', {})
    refuse_launch('a grid search', dict(env, RANK='0', WORLD_SIZE='1'))
    assert not writer_rank('auto', env)
    assert writer_rank('off', env)
    assert writer_rank('auto', dict(env, RANK='0'))
    assert writer_rank('auto', {})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from mambarec_pyg.config import Config, DataConfig
    from mambarec_pyg.train.search import grid_search
    with pytest.raises(ConfigError, match='does not run under torchrun'):
        grid_search(None, Config(data=DataConfig(synthetic='tiny')), {'train.lr': [0.1]})
    from mambarec_pyg.experiments import get_experiment, synthetic_setup
    out = tmp_path / 'table2'
    with pytest.raises(ConfigError, match='mambarec experiment table2 does not run '
                       'under torchrun'):
        get_experiment('table2').run(synthetic_setup(out))
    assert not out.exists() or not any(out.iterdir())


def _benchmark():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'benchmark_distributed', ROOT / 'benchmarks' / 'distributed.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_memory_formula_counts_the_model(tiny_data):
    """The README's per-device memory formula (benchmarks/distributed.py) against
    counts taken from built models: LightGCN's parameters are (U + I) d and its
    graph 2 |R| stored entries; MambaRec's parameters that grow with U and I are
    (U + I) d + I (f_image + f_text) (trained feature tables)."""
    from mambarec_pyg.models import get_config_class
    from mambarec_pyg.train.experiment import build_model
    bench = _benchmark()
    U, I = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    widths = [tiny_data['item']['image'].size(1), tiny_data['item']['text'].size(1)]
    edges = tiny_data['user', 'interacts', 'item'].edge_index
    num_r = len({(int(u), int(i)) for u, i in edges.t()})
    lightgcn = build_model(tiny_data, get_config_class('lightgcn')())
    d = lightgcn.config.embedding_size if hasattr(lightgcn, 'config') else 64
    plain_params = sum(p.numel() for p in lightgcn.parameters())
    assert bench._sparse_nonzeros(lightgcn) == 2 * num_r
    got = bench.memory_formula(U, I, widths, d, 2 * num_r, alpha=3.0)
    assert got['params'] == 16 * plain_params
    assert got['graphs'] == 12 * 2 * num_r
    assert got['features'] == 4 * I * sum(widths)
    assert got['activations'] == 4 * 3.0 * (U + I) * d
    assert got['total'] == sum(v for k, v in got.items() if k != 'total')

    mambarec = build_model(tiny_data, get_config_class('mambarec')())
    d = get_config_class('mambarec')().embedding_size
    scaled = sum(p.numel() for p in mambarec.parameters() if p.size(0) in (U, I))
    dense = sum(p.numel() for p in mambarec.parameters()) - scaled
    assert scaled == (U + I) * d + I * sum(widths)
    got = bench.memory_formula(U, I, widths, d, 0, dense, trainable_features=True)
    assert got['params'] == 16 * sum(p.numel() for p in mambarec.parameters())


def test_the_benchmark_runs_on_tiny_settings(tmp_path):
    """benchmarks/distributed.py --quick in its single-process modes (figures are
    not checked: they are for a quiet machine)."""
    for mode in (['--single-path'], ['--memory']):
        done = subprocess.run([sys.executable, str(ROOT / 'benchmarks' /
                                                   'distributed.py'), '--quick',
                               '--models', 'lightgcn', '--results', str(tmp_path),
                               *mode],
                              env=_env(), cwd=str(ROOT), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert 'written' in done.stdout and 'lightgcn' in done.stdout
    rows = json.loads((tmp_path / 'distributed-memory.json').read_text())['rows']
    assert rows[0]['params_scaling_with_users_items'] == \
        rows[0]['formula_params_scaling']
