"""One optimisation step, the seam between the training loop and the processes that
compute it.

The loop (:class:`~mambarec_pyg.train.trainer.Trainer`) hands every *global* batch
of BPR triples to a :class:`TrainingStep` in two calls: :meth:`TrainingStep.forward`
(the model's named loss parts, with their graph) and, once the loop has checked
them, :meth:`TrainingStep.update` (gradients and the optimiser). The loss parts it
logs for an epoch go through :meth:`TrainingStep.reduce`, and the decision to stop
on a non-finite loss through :meth:`TrainingStep.all_finite`. On one process these
are the plain calls; a data-parallel step
(:class:`~mambarec_pyg.train.distributed.DistributedStep`) computes each process's
slice of the batch, synchronises the gradients, averages the logged values and
makes every process take the same decision, behind the same methods.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

from ..data.sampling import BPRBatch

__all__ = ['TrainingStep']


class TrainingStep:
    """Forward, backward and optimiser step of ``model`` on one process.

    Args:
        model: a :class:`~mambarec_pyg.models.Recommender` (its :meth:`loss` returns
            named 0-dim tensors with ``'total'``).
        optimizer: the optimiser of its parameters.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def forward(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """The loss parts of ``batch`` (the whole global batch)."""
        return self.model.loss(batch)

    def update(self, parts: Dict[str, Tensor]) -> None:
        """Backpropagate ``parts['total']`` and apply one optimiser step."""
        self.optimizer.zero_grad(set_to_none=True)
        parts['total'].backward()
        self.optimizer.step()

    def reduce(self, values: Tensor) -> Tensor:
        """Logged values (a tensor of loss parts) as the whole batch's: here as they
        are."""
        return values

    def all_finite(self, values: Tensor) -> bool:
        """Whether the logged ``values`` of a step are all finite (on several
        processes: on every process, one answer for all, so that they stop
        together)."""
        return bool(torch.isfinite(values).all())
