"""Training and evaluation under the MMRec protocol (docs/reference.md §1), for any
registered model.

* :class:`Trainer` -- BPR training with Adam, per-epoch validation, early stopping,
  checkpoints and exact resumption;
* :func:`mambarec_pyg.evaluate` (``train.evaluate.evaluate``) / :class:`Evaluator` --
  full-ranking Recall, NDCG, Precision and MAP at every K;
* :func:`grid_search` -- a model's grid, selected on the validation split;
* :func:`run` / :func:`load_run` -- one run from a :class:`~mambarec_pyg.config.Config`,
  and the model back from its checkpoint.

The trainer's parts: :class:`~.state.RunState` (what a run remembers),
:class:`~.recorder.RunRecorder` (the run directory's files), :mod:`~.rundir` (the one
rule for finished runs and allowed changes), :class:`~.step.TrainingStep` (one
optimisation step) and :mod:`~.process` (determinism and signals during a run).
Under ``torchrun``, :func:`run` trains data-parallel: :mod:`~.distributed` (process
group, batch slices, :class:`~.distributed.DistributedStep`) and :mod:`~.parallel`
(:class:`~.parallel.DistributedTrainer`).
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import Evaluator, evaluate, recommend
from .experiment import build_model, load_run, run
from .recorder import RunRecorder
from .search import SearchResult, grid_search
from .state import RunState
from .step import TrainingStep
from .trainer import TrainResult, Trainer, TrainingDivergedError, make_optimizer

__all__ = [
    'Evaluator',
    'RunRecorder',
    'RunState',
    'SearchResult',
    'TrainResult',
    'Trainer',
    'TrainingDivergedError',
    'TrainingStep',
    'build_model',
    'evaluate',
    'grid_search',
    'load_checkpoint',
    'load_run',
    'make_optimizer',
    'recommend',
    'run',
    'save_checkpoint',
]
