"""Fixtures of the serving tests: models trained for one epoch on ``tiny`` (once per
session), their checkpoints and exports."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from mambarec_pyg.config import Config, DataConfig, TrainConfig
from mambarec_pyg.models import get_config_class


@pytest.fixture(scope='session')
def checkpoint(tiny_data, tmp_path_factory) -> Callable[..., Path]:
    """``checkpoint(name, seed=999)``: the ``best.pt`` of model ``name`` trained for
    one epoch on ``tiny`` (batch 256) with ``seed``; trained once per session."""
    done: Dict[Tuple[str, int], Path] = {}

    def make(name: str, seed: int = 999) -> Path:
        from mambarec_pyg.train.experiment import run
        if (name, seed) not in done:
            config = Config(data=DataConfig(synthetic='tiny'),
                            model=get_config_class(name)(),
                            train=TrainConfig(device='cpu', batch_size=256,
                                              max_epochs=1, seed=seed,
                                              checkpoint_interval_s=0))
            out = tmp_path_factory.mktemp(f'run-{name}-{seed}')
            run(config, out, data=tiny_data, quiet=True)
            done[name, seed] = out / 'best.pt'
        return done[name, seed]

    return make

