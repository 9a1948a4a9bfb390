"""The OpenMP wait policy: passive by default, set before torch loads, never
overriding the user's, and a note when it came too late."""
from __future__ import annotations

import os
import subprocess
import sys

import torch


def _run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != 'OMP_WAIT_POLICY'}
    environ.update(env)
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          env=environ, check=True).stdout.strip()


def test_passive_wait_is_set_before_torch_loads():
    code = ('import mambarec_pyg, os, sys; print(os.environ["OMP_WAIT_POLICY"], '
            'mambarec_pyg.OMP_POLICY_APPLIED)')
    assert _run(code) == 'PASSIVE True'
    # the user's choice stands
    assert _run(code, OMP_WAIT_POLICY='ACTIVE') == 'ACTIVE True'
    # torch first: too late for the runtime, and the package knows it
    assert _run('import torch; ' + code) == 'PASSIVE False'


def test_trainer_notes_a_policy_that_came_too_late(monkeypatch, tiny_data, capsys):
    import mambarec_pyg
    from mambarec_pyg.config import TrainConfig
    from mambarec_pyg.models import BPR
    from mambarec_pyg.train.trainer import Trainer
    monkeypatch.setattr(mambarec_pyg, 'OMP_POLICY_APPLIED', False)
    threads = torch.get_num_threads()
    try:
        cfg = TrainConfig(device='cpu', max_epochs=1, num_threads=2)
        Trainer(BPR(tiny_data), tiny_data, cfg, quiet=False).fit()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert 'OMP_WAIT_POLICY=PASSIVE' in out.out + out.err
