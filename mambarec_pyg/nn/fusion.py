r"""The behaviour-aware fuser of MGCN (`"Multi-View Graph Convolutional Network for
Multimedia Recommendation" <https://arxiv.org/abs/2308.03588>`_, ACM MM 2023), which
MambaRec keeps (docs/reference.md §3, step 8).

Given the content (ID) view :math:`\mathbf{c}` and the modality views
:math:`\mathbf{z}_m` of the same rows:

.. math::
    a = \mathrm{softmax}_m\big(q(\mathbf{z}_m)\big), \quad
    q = \mathrm{Lin}(d \to 1, \text{no bias}) \circ \tanh \circ \mathrm{Lin}(d \to d),

.. math::
    \mathrm{common} = \sum_m a_m \mathbf{z}_m, \quad
    \mathbf{s}_m = \sigma(\mathrm{Lin}'_m(\mathbf{c})) \odot
    (\mathbf{z}_m - \mathrm{common}), \quad
    \mathrm{side} = \frac{\sum_m \mathbf{s}_m + \mathrm{common}}{M + 1},

with one query :math:`q` shared by the modalities and one preference gate
:math:`\mathrm{Lin}'_m` each. With a single modality there is nothing to fuse and
:math:`\mathrm{side} = \mathbf{z}_m`. The fusion is row-wise, so it may run on only the
rows a loss reads.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import Linear

__all__ = ['ModalityFusion']


class ModalityFusion(torch.nn.Module):
    r"""MGCN's behaviour-aware fuser (see the module docstring).

    Args:
        channels (int): the width :math:`d` of every view.
        modalities (sequence of str): the modality names, in the order of the views
            given to :meth:`forward`.
    """

    def __init__(self, channels: int, modalities: Sequence[str]):
        super().__init__()
        self.modalities = tuple(modalities)
        if len(self.modalities) > 1:
            self.query = torch.nn.Sequential(Linear(channels, channels),
                                             torch.nn.Tanh(),
                                             Linear(channels, 1, bias=False))
            self.preference_gates = torch.nn.ModuleDict(
                {m: Linear(channels, channels) for m in self.modalities})
        else:
            self.query = None
            self.preference_gates = None

    def reset_parameters(self) -> None:
        if self.query is not None:
            self.query[0].reset_parameters()
            self.query[2].reset_parameters()
            for gate in self.preference_gates.values():
                gate.reset_parameters()

    def forward(self, content: Tensor, views: Sequence[Tensor]) -> Tensor:
        """The side embedding ``[R, d]`` of rows ``content [R, d]`` and one view
        ``[R, d]`` per modality."""
        if len(views) != len(self.modalities):
            raise ValueError(f'ModalityFusion: expected {len(self.modalities)} views, '
                             f'got {len(views)}')
        if len(views) == 1:
            return views[0]
        z = torch.stack(list(views))                       # [M, R, d]
        weight = torch.softmax(self.query(z), dim=0)        # [M, R, 1]
        common = (weight * z).sum(dim=0)
        side = common
        for m, z_m in zip(self.modalities, views):
            prefer = torch.sigmoid(self.preference_gates[m](content))
            side = side + prefer * (z_m - common)
        return side / (len(views) + 1)
