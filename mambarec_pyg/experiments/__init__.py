"""The MambaRec paper's experiments, one command each.

* ``table2`` -- every model on every dataset, with significance (Table 2);
* ``table3`` -- MambaRec with text only, visual only, and both (Table 3);
* ``ablation`` -- without local or without global alignment (Figure 3);
* ``sensitivity`` -- the InfoNCE weight; reduction factor x MMD weight (Figures 4-5);
* ``reduction`` -- the reduction factor against Recall@20, parameters and training
  time (Figure 6);
* ``embeddings`` -- t-SNE and density of the item embeddings, MambaRec against VBPR
  (Figures 7-8).

From the command line: ``mambarec experiment NAME --data ROOT --datasets baby
sports clothing --output DIR [--seeds N] [--quick]`` (or ``--synthetic PRESET``);
from Python::

    from mambarec_pyg.experiments import run_experiment, synthetic_setup
    result = run_experiment('table2', synthetic_setup('runs/t2', quick=True,
                                                      models=['bpr', 'mambarec']))
    print(result.files['markdown'])

Every experiment is made of full training runs, one directory each, reused when
finished and continued when interrupted (:mod:`~mambarec_pyg.experiments.runner`),
run one after the other or at the same time on local processes, Ray or Slurm
(``Setup(executor=ExecutorOptions(kind='ray', workers=8))``;
:mod:`~mambarec_pyg.train.executors`),
and writes ``NAME.md``, ``NAME.csv``, ``NAME.json``, its figures and
``summary.json`` (which runs and configurations produced every number).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Type, Union

from .ablation import Ablation
from .embeddings import Embeddings
from .plots import MissingDependency, plot_runs
from .presets import Preset, get_preset, list_presets, load_presets, register_preset
from .reduction import Reduction
from ..train.executors import ExecutorOptions
from .runner import (CellResult, Collected, DatasetSpec, Experiment, ExperimentResult,
                     Setup)
from .sensitivity import Sensitivity
from .significance import PairedTest, paired_tests
from .table2 import Table2
from .table3 import Table3

__all__ = ['EXPERIMENTS', 'run_experiment', 'get_experiment', 'synthetic_setup',
           'mmrec_setup', 'Setup', 'DatasetSpec', 'Experiment', 'ExperimentResult',
           'CellResult', 'Collected', 'Preset', 'register_preset', 'get_preset', 'list_presets',
           'load_presets', 'paired_tests', 'PairedTest', 'plot_runs',
           'MissingDependency', 'ExecutorOptions']

#: the experiments by name, in the paper's order.
EXPERIMENTS: Dict[str, Type[Experiment]] = {
    cls.name: cls for cls in (Table2, Table3, Ablation, Sensitivity, Reduction,
                              Embeddings)
}


def get_experiment(name: str) -> Experiment:
    """A new instance of the experiment ``name``."""
    from ..config import ConfigError
    from ..utils import did_you_mean
    if name not in EXPERIMENTS:
        raise ConfigError(f'unknown experiment {name!r}{did_you_mean(name, EXPERIMENTS)} '
                          f'(experiments: {", ".join(EXPERIMENTS)})')
    return EXPERIMENTS[name]()


def run_experiment(name: str, setup: Setup) -> ExperimentResult:
    """Run (or resume) the experiment ``name`` as ``setup`` says."""
    return get_experiment(name).run(setup)


def synthetic_setup(output: Union[str, Path], presets: Sequence[str] = ('tiny', ),
                    seed: int = 0, **kwargs) -> Setup:
    """A :class:`Setup` on synthetic presets (``kwargs``: the other fields)."""
    from ..config import DataConfig
    datasets = [DatasetSpec(f'synthetic-{p}', DataConfig(synthetic=p,
                                                         synthetic_seed=seed))
                for p in presets]
    return Setup(output=Path(output), datasets=datasets, **kwargs)


def mmrec_setup(output: Union[str, Path], root: Union[str, Path],
                datasets: Sequence[str], **kwargs) -> Setup:
    """A :class:`Setup` on MMRec datasets ``root/NAME/`` (``kwargs``: the other
    fields)."""
    from ..config import DataConfig
    from .paper import paper_dataset
    specs = [DatasetSpec(d, DataConfig(root=str(root), dataset=d), paper_dataset(d))
             for d in datasets]
    return Setup(output=Path(output), datasets=specs, **kwargs)
