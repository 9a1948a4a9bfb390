"""One process of the data-parallel trainer tests
(``tests/train/test_distributed_trainer.py``): a whole run through
:func:`mambarec_pyg.train.experiment.run` -- what ``mambarec train`` calls -- in
float64 on the ``tiny`` data.

Started alone it trains on one process; started with the environment ``torchrun``
sets (by the test, or by ``python -m torch.distributed.run``) it trains
data-parallel, as ``mambarec train`` would.

    python tests/distributed_trainer_worker.py OUT MODEL[,MODEL] EPOCHS \\
        [--resume] [--timeout S] [--kill RANK:STEP] [--sigterm-parent STEP]

Each model's run directory is ``OUT/<model>``. ``--kill RANK:STEP``: the process of
rank RANK kills itself (SIGKILL) at its optimisation step STEP (counted from 0 in
this process's life); ``--sigterm-parent STEP``: rank 0 sends SIGTERM to its parent
(the ``torchrun`` agent) at step STEP. The process's outcome goes to
``OUT/outcome-<rank>.json`` (status, epochs, or the error message).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from support import default_dtype  # noqa: E402

from mambarec_pyg.config import Config, DataConfig, TrainConfig  # noqa: E402
from mambarec_pyg.errors import MambaRecError  # noqa: E402
from mambarec_pyg.models import get_config_class  # noqa: E402
from mambarec_pyg.train import step as step_module  # noqa: E402
from mambarec_pyg.train.experiment import run  # noqa: E402

SEED = 7
LR = 0.01
#: 777 training pairs on tiny: 9 global batches per epoch, the last of one triple.
BATCH = 97


def config(name: str, epochs: int, timeout_s: float) -> Config:
    return Config(data=DataConfig(synthetic='tiny'), model=get_config_class(name)(),
                  train=TrainConfig(seed=SEED, device='cpu', batch_size=BATCH, lr=LR,
                                    max_epochs=epochs, checkpoint_interval_s=0,
                                    num_threads=1, distributed_timeout_s=timeout_s))


def _at_step(step: int, action) -> None:
    """Run ``action()`` just before this process's optimisation step ``step``."""
    from mambarec_pyg.train import distributed
    count = [0]
    for cls in (step_module.TrainingStep, distributed.DistributedStep):
        original = cls.update

        def update(self, parts, _original=original):
            if count[0] == step:
                action()
            count[0] += 1
            return _original(self, parts)
        cls.update = update


def main(argv) -> int:
    out, names, epochs = Path(argv[0]), argv[1].split(','), int(argv[2])
    opts = argv[3:]
    resume = '--resume' in opts
    timeout_s = float(opts[opts.index('--timeout') + 1]) if '--timeout' in opts \
        else 60.0
    rank = int(os.environ.get('RANK', '0'))
    if '--kill' in opts:
        who, step = map(int, opts[opts.index('--kill') + 1].split(':'))
        if who == rank:
            _at_step(step, lambda: os.kill(os.getpid(), signal.SIGKILL))
    if '--sigterm-parent' in opts and rank == 0:
        step = int(opts[opts.index('--sigterm-parent') + 1])
        _at_step(step, lambda: (os.kill(os.getppid(), signal.SIGTERM),
                                time.sleep(5)))
    outcome = {}
    t0 = time.monotonic()
    try:
        for name in names:
            with default_dtype(torch.float64):
                result = run(config(name, epochs, timeout_s), out / name,
                             resume=resume, quiet=True)
            outcome[name] = {'status': result.status, 'epochs': result.epochs,
                             'best_epoch': result.best_epoch, 'valid': result.valid,
                             'test': result.test}
        code = 0
    except (MambaRecError, KeyboardInterrupt) as e:
        outcome['error'] = f'{type(e).__name__}: {e}'
        code = 1
    outcome['seconds'] = time.monotonic() - t0
    tmp = out / f'.outcome-{rank}.json'
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, out / f'outcome-{rank}.json')
    return code


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
