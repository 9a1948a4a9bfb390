"""What a training run remembers from one epoch to the next.

:class:`RunState` holds the counters and records of a run -- epochs completed, the best
epoch, its valid metric, its valid and test metrics and its weights, the
early-stopping counter, the per-epoch history, the timings, the warnings -- and the
random state it consumes: Python's, NumPy's and torch's generators and the
:class:`torch.Generator` that draws the training pairs. Like a Lightning callback it
has :meth:`~RunState.state_dict` / :meth:`~RunState.load_state_dict`; its state is
part of ``last.pt`` (:meth:`Trainer.state_dict
<mambarec_pyg.train.trainer.Trainer.state_dict>`), under the keys checkpoints have
always used, so checkpoints written before it existed load unchanged.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from .checkpoint import rng_state, seed_everything, set_rng_state

__all__ = ['RunState']


class RunState:
    """The state of one training run (see the module doc).

    Attributes:
        epoch: epochs completed.
        best_epoch: the epoch (0-based) with the best valid metric; ``-1`` before any.
        best_value: its valid metric (``-inf`` before any).
        best_valid, best_test: its valid and test metrics.
        best_weights: its weights (a ``state_dict`` of detached copies), or ``None``.
        bad_epochs: epochs since the last strict improvement that count towards
            patience.
        history: one record per completed epoch.
        timings: accumulated ``train_s``, ``eval_s``, ``checkpoint_s``, ``total_s``.
        warnings: warnings about the run, in order, without repeats.
        generator: the generator of the training pairs.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.best_epoch = -1
        self.best_value = -math.inf
        self.best_valid: Dict[str, float] = {}
        self.best_test: Dict[str, float] = {}
        self.best_weights: Optional[Dict[str, Tensor]] = None
        self.bad_epochs = 0
        self.history: List[Dict[str, Any]] = []
        self.timings: Dict[str, float] = {'train_s': 0.0, 'eval_s': 0.0,
                                          'checkpoint_s': 0.0, 'total_s': 0.0}
        self.warnings: List[str] = []
        self.generator = torch.Generator()

    def seed(self, seed: int) -> None:
        """Seed every generator the run consumes (Python, NumPy, torch on every
        device, and the training pairs') with ``seed``."""
        seed_everything(seed)
        self.generator.manual_seed(seed)

    def set_best(self, epoch: int, value: float, valid: Dict[str, float],
                 test: Dict[str, float], model: torch.nn.Module) -> None:
        """Record ``epoch`` as the best so far, with a copy of ``model``'s weights."""
        self.best_epoch, self.best_value = epoch, value
        self.best_valid, self.best_test = valid, test
        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def add_warnings(self, warnings) -> None:
        """Append ``warnings``, leaving out those already there."""
        self.warnings = list(dict.fromkeys([*self.warnings, *warnings]))

    def timing_summary(self) -> Dict[str, float]:
        """:attr:`timings` with the mean training and evaluation time per epoch."""
        t = dict(self.timings)
        n = len(self.history)
        if n:
            t['mean_epoch_train_s'] = sum(r['train_s'] for r in self.history) / n
            t['mean_epoch_eval_s'] = sum(r['eval_s'] for r in self.history) / n
        return t

    def best_summary(self) -> Dict[str, Any]:
        """The best epoch and its metrics, as checkpoints record them."""
        return {'best_epoch': self.best_epoch, 'best_value': self.best_value,
                'best_valid': self.best_valid, 'best_test': self.best_test}

    # -- state_dict -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """The state as plain data and tensors, and every random state now. The best
        weights are included only when they are not the last epoch's (``last.pt``
        then holds them as its ``model``)."""
        state = {'epoch': self.epoch, **self.best_summary(),
                 'bad_epochs': self.bad_epochs, 'history': self.history,
                 'timings': self.timings, 'warnings': self.warnings,
                 'rng': rng_state(self.generator)}
        if self.best_weights is not None and self.best_epoch != self.epoch - 1:
            state['best_model'] = self.best_weights
        return state

    def load_state_dict(self, state: Mapping[str, Any],
                        device: Optional[torch.device] = None) -> None:
        """Restore what :meth:`state_dict` returned (every random state included).

        Args:
            state: the state, or a whole ``last.pt`` checkpoint (whose ``model``
                serves as the best weights when the best epoch was the last one).
            device: where the best weights go (default: where they are).
        """
        set_rng_state(state['rng'], self.generator)
        self.epoch = state['epoch']
        self.best_epoch = state['best_epoch']
        self.best_value = state['best_value']
        self.best_valid = state['best_valid']
        self.best_test = state['best_test']
        self.bad_epochs = state['bad_epochs']
        self.history = list(state['history'])
        self.timings.update(state.get('timings') or {})
        self.warnings = list(state.get('warnings') or [])
        best = state.get('best_model')
        if best is None and self.best_epoch == self.epoch - 1:
            best = state.get('model')
        self.best_weights = ({k: v.to(device) if device is not None else v
                              for k, v in best.items()} if best is not None else None)
