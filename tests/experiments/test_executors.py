"""Experiments on executors: ``table2 --synthetic tiny --quick`` with 2 local workers,
Ray (a local 2-CPU cluster) and Slurm (submitit's local executor) gives the table of 1
worker; a rerun trains nothing; a killed worker's cell is resumed; two commands at
once share the cells; a cell another process holds is never run; a failed cell is
reported with its directory and the others go on."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mambarec_pyg.cli import main
from mambarec_pyg.experiments import run_experiment, synthetic_setup
from mambarec_pyg.train.executors import (CellLock, ExecutorOptions, Task,
                                                run_cell)

MODELS = ['popularity', 'bpr', 'lightgcn']
ROOT = Path(__file__).resolve().parents[2]


def _setup(out: Path, **executor):
    return synthetic_setup(out, quick=True, models=MODELS, figures=False, quiet=True,
                           executor=ExecutorOptions(**executor))


def _table(out: Path) -> str:
    return (out / 'table2.json').read_text()


def _stamps(out: Path):
    return {p: p.stat().st_mtime_ns for p in (out / 'runs').rglob('*')
            if p.name in ('results.json', 'best.pt', 'last.pt')}


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    """The table of one worker (this process)."""
    out = tmp_path_factory.mktemp('one') / 'table2'
    result = run_experiment('table2', _setup(out))
    assert result.status == 'complete'
    return out


def test_two_local_workers_give_the_table_of_one_and_a_rerun_trains_nothing(
        reference, tmp_path, capsys):
    out = tmp_path / 'two'
    result = run_experiment('table2', _setup(out, workers=2))
    assert result.status == 'complete'
    assert _table(out) == _table(reference)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['executor']['workers'] == 2 and summary['missing'] == []
    before = _stamps(out)
    assert len(before) == 3 * len(MODELS) - 1  # popularity keeps no last.pt
    again = run_experiment('table2', _setup(out, workers=2))
    assert all(r.reused for r in again.results)
    assert _stamps(out) == before
    assert _table(out) == _table(reference)


def test_ray_gives_the_table_of_one_worker(reference, tmp_path):
    pytest.importorskip('ray')
    out = tmp_path / 'ray'
    t0 = time.perf_counter()
    result = run_experiment('table2', _setup(out, kind='ray', workers=2))
    assert result.status == 'complete'
    assert _table(out) == _table(reference)
    print(f'ray: {time.perf_counter() - t0:.1f} s')


def test_slurm_through_submitit_local_gives_the_table_of_one_worker(reference,
                                                                     tmp_path):
    pytest.importorskip('submitit')
    out = tmp_path / 'slurm'
    result = run_experiment('table2', _setup(out, kind='slurm', workers=2,
                                             slurm_cluster='local'))
    assert result.status == 'complete'
    assert _table(out) == _table(reference)
    assert any((out / 'slurm').iterdir())  # submitit's job files and logs


# ---------------------------------------------------------------------------------
# Locks: a cell another process holds is never run twice
# ---------------------------------------------------------------------------------
def _task(directory: Path) -> Task:
    from mambarec_pyg.config import Config, DataConfig, TrainConfig
    from mambarec_pyg.models.registry import get_config_class
    config = Config(data=DataConfig(synthetic='tiny'),
                    model=get_config_class('bpr')(),
                    train=TrainConfig(max_epochs=1, batch_size=128, num_threads=1))
    return Task(key='bpr', directory=str(directory), config=config.to_dict())


def test_a_held_cell_is_busy_and_nothing_is_written(tmp_path):
    directory = tmp_path / 'cell'
    with CellLock(directory):  # as another process would hold it
        out = run_cell(_task(directory))
    assert out['status'] == 'busy' and 'in use by another run' in out['error']
    assert sorted(p.name for p in directory.iterdir()) == [CellLock.NAME]
    out = run_cell(_task(directory))
    assert out['status'] in ('max_epochs', 'early_stopped') and not out['reused']
    again = run_cell(_task(directory))
    assert again['reused'] and again['record'] == out['record']


def _command(out: Path, *extra: str):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    return subprocess.Popen(
        [sys.executable, '-m', 'mambarec_pyg.cli', 'experiment', 'table2', '--quick',
         '--synthetic', 'tiny', '--models', *MODELS, '--no-figures', '--output',
         str(out), *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


_DONE = re.compile(r'^\[\d+/\d+\] synthetic-tiny \| (\w+) \| seed \d+: test ')


def _trained(stderr: str):
    """The rows of the cells this command trained (not reused, not waited for)."""
    return [m.group(1) for line in stderr.splitlines()
            if (m := _DONE.match(line)) and '[finished earlier, reused]' not in line]


def test_two_commands_at_once_share_the_cells(reference, tmp_path):
    out = tmp_path / 'shared'
    first, second = _command(out), _command(out)
    outputs = [p.communicate(timeout=600) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    trained = _trained(outputs[0][1]) + _trained(outputs[1][1])
    assert sorted(trained) == sorted(MODELS), trained  # each cell once, in all
    assert _table(out) == _table(reference)


def test_a_cell_another_process_holds_is_waited_for_and_reused(reference, tmp_path):
    # this process holds the bpr cell as another command would, and trains it
    # while the command waits; the command then reuses it and trains it not again
    from mambarec_pyg.experiments import get_experiment
    from mambarec_pyg.train.experiment import run
    out = tmp_path / 'held'
    cell = next(c for c in get_experiment('table2').plan(_setup(out))
                if c.row == 'bpr')
    directory = out / 'runs' / cell.key
    lock = CellLock(directory).acquire()
    try:
        proc = _command(out)
        deadline = time.monotonic() + 300
        lines = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if line.startswith('waiting for 1 run(s) that another process holds'):
                break
            if not line and proc.poll() is not None:
                pytest.fail(''.join(lines))
        else:
            pytest.fail('the command did not wait: ' + ''.join(lines))
        assert not (directory / 'results.json').exists()
        run(cell.config, directory, resume=True, quiet=True)
    finally:
        lock.release()
    rest = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, rest
    stderr = ''.join(lines) + rest
    assert sorted(_trained(stderr)) == ['lightgcn', 'popularity']
    assert re.search(r'\| bpr \| .*\[finished earlier, reused\]', stderr)
    assert _table(out) == _table(reference)


def test_a_killed_workers_cell_is_resumed(tmp_path):
    # the bpr cell trains 40 epochs, writing last.pt after every one; the command and
    # its 2 worker processes are killed (SIGKILL, as a lost node) once some are done;
    # the next command (1 worker, this process) resumes the cell
    out = tmp_path / 'killed'
    extra = ('--train.max-epochs', '40', '--train.patience', '100',
             '--train.checkpoint-interval-s', '0', '--quiet')
    cell = out / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999'
    proc = _command(out, *extra, '--workers', '2')
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        history = cell / 'metrics.csv'
        if history.is_file() and len(history.read_text().splitlines()) > 3:
            break
        if proc.poll() is not None:
            pytest.fail(f'the command ended first: {proc.communicate()}')
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    record = json.loads((cell / 'results.json').read_text()) \
        if (cell / 'results.json').is_file() else {}
    assert record.get('status') not in ('max_epochs', 'early_stopped')
    assert (cell / 'last.pt').is_file()
    # the next command resumes it; its metrics are those of an uninterrupted run
    def args(where):
        return ['experiment', 'table2', '--quick', '--synthetic', 'tiny', '--models',
                *MODELS, '--no-figures', '--output', str(where), *extra]

    assert main(args(out)) == 0
    assert 'resumed from' in (cell / 'train.log').read_text()
    fresh = tmp_path / 'fresh'
    assert main(args(fresh)) == 0
    done = json.loads((cell / 'results.json').read_text())
    ref = json.loads((fresh / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999' /
                      'results.json').read_text())
    assert done['epochs'] == ref['epochs'] == 40
    assert done['test'] == ref['test'] and done['best_epoch'] == ref['best_epoch']
    assert _table(out) == _table(fresh)


def test_a_failed_cell_is_reported_and_the_others_go_on(tmp_path, capsys):
    # lightgcn's cell cannot train: a learning rate that makes it diverge
    from mambarec_pyg.experiments.presets import register_preset, unregister_preset
    register_preset('broken', 'lightgcn', {'train.lr': 1e30}, 'diverges')
    try:
        out = tmp_path / 'failed'
        assert main(['experiment', 'table2', '--quick', '--synthetic', 'tiny',
                     '--models', 'bpr', 'broken', '--no-figures', '--output', str(out),
                     '--workers', '2']) == 1
    finally:
        unregister_preset('broken')
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if '| broken |' in x)
    assert 'FAILED (runs/synthetic-tiny/broken/seed-999)' in line
    assert 'missing' in err and 'runs/synthetic-tiny/broken/seed-999' in err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['missing'] == ['runs/synthetic-tiny/broken/seed-999']
    assert (out / 'runs' / 'synthetic-tiny' / 'bpr' / 'seed-999' /
            'results.json').is_file()


def test_bad_executor_options_stop_before_any_run(tmp_path, capsys):
    out = tmp_path / 'bad'
    assert main(['experiment', 'table2', '--quick', '--synthetic', 'tiny',
                 '--output', str(out), '--workers', '0']) == 2
    assert '--workers: expected a positive integer, got 0' in capsys.readouterr().err
    assert not (out / 'runs').exists()


# ---------------------------------------------------------------------------------
# Devices, threads and the Slurm options
# ---------------------------------------------------------------------------------
def test_each_local_worker_gets_one_gpu_or_a_share_of_the_cores(monkeypatch):
    import queue
    from mambarec_pyg.train import executors
    slots = queue.Queue()
    for slot in range(3):
        slots.put(slot)
    seen = []
    for _ in range(3):  # three pool processes starting, two GPUs
        monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
        executors._init_worker(slots, ['3', '5'])
        seen.append(os.environ['CUDA_VISIBLE_DEVICES'])
    assert seen == ['3', '5', '3']
    monkeypatch.setattr(executors, 'cpu_cores', lambda: 16)
    assert executors.LocalExecutor(4, devices=[]).threads == 4
    assert executors.LocalExecutor(32, devices=[]).threads == 1
    assert executors.LocalExecutor(4, devices=['0', '1']).threads == 4
    assert executors.LocalExecutor(1, devices=[]).threads == 0  # today's behaviour


def test_the_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    pytest.importorskip('submitit')
    from mambarec_pyg.train.executors import SlurmExecutor
    fake = tmp_path / 'bin'
    fake.mkdir()
    (fake / 'srun').write_text('#!/bin/sh\nexit 1\n')
    (fake / 'srun').chmod(0o755)  # submitit looks for srun to know it is on Slurm
    monkeypatch.setenv('PATH', f'{fake}{os.pathsep}{os.environ["PATH"]}')
    options = ExecutorOptions(kind='slurm', workers=16, slurm_partition='gpu',
                              slurm_time=360, slurm_gpus=1, slurm_cpus=4,
                              slurm_mem_gb=32, slurm_account='lab',
                              slurm_extra={'qos': 'high'})
    executor = SlurmExecutor(tmp_path / 'logs', options, 'mambarec-t2')
    script = executor.executor._executor._make_submission_file_text('python x', 'id')
    for line in ('--partition=gpu', '--time=360', '--gpus-per-node=1',
                 '--cpus-per-task=4', '--mem=32GB', '--account=lab', '--qos=high',
                 '--job-name=mambarec-t2'):
        assert f'#SBATCH {line}\n' in script, line
    assert executor.threads == 4  # the run's CPU threads: the task's CPUs
    from mambarec_pyg.errors import ConfigError
    with pytest.raises(ConfigError, match='--slurm-time'):
        ExecutorOptions(kind='slurm', slurm_time=0)
