r"""BPR-MF: matrix factorisation trained with Bayesian personalised ranking
(`"BPR: Bayesian Personalized Ranking from Implicit Feedback"
<https://arxiv.org/abs/1205.2618>`_, Rendle et al., UAI 2009), as MMRec computes it
(``src/models/bpr.py``; ../BASELINES.md §3.1).

.. math::
    \hat y_{ui} = \mathbf{p}_u^\top \mathbf{q}_i, \qquad
    \mathcal{L} = -\frac{1}{B}\sum_b \log\sigma(\hat y_{u i^+} - \hat y_{u i^-})
    + \lambda \frac{\|\mathbf{P}_b\|_F + \|\mathbf{Q}_{b^+}\|_F +
    \|\mathbf{Q}_{b^-}\|_F}{B},

with MMRec's ``EmbLoss`` (Frobenius norms, not squared) on the batch embeddings and
Xavier-normal initialisation. No item features.

On several processes (:mod:`~mambarec_pyg.train.distributed`) the BPR mean is
over the global batch (``batch.mean``) and each Frobenius norm is the global
batch's, from the gathered row norms (:func:`~mambarec_pyg.nn.losses.emb_loss`
with ``batch``).

Where this differs from MMRec: MMRec's BPR loss is :math:`-\log(10^{-10} +
\sigma(\cdot))`; here :math:`\mathrm{softplus}(\hat y_{ui^-} - \hat y_{ui^+})`, the
same value without the :math:`10^{-10}` (a relative difference below
:math:`10^{-9}` for any score difference above :math:`-20`) and without its
overflow.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Tuple

import torch
from torch import Tensor

from ..config import ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..nn.losses import bpr_loss, emb_loss
from .base import Recommender
from .registry import register

__all__ = ['BPR', 'BPRConfig']


@dataclass
class BPRConfig(ModelConfig):
    """BPR-MF (MMRec's ``BPR.yaml``)."""

    #: width d of the user and item embeddings.
    embedding_size: int = 64
    #: weight of the EmbLoss regulariser. MMRec's yaml lists only its grid; the
    #: default here is 1e-4 (the LightGCN paper's value, and in that grid).
    reg_weight: float = 1e-4

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_range('model.reg_weight', self.reg_weight, 0.0)


@register('bpr')
class BPR(Recommender):
    """BPR matrix factorisation (see the module docstring)."""

    config_class = BPRConfig
    reference = ('Rendle et al., "BPR: Bayesian Personalized Ranking from Implicit '
                 'Feedback", UAI 2009')

    def __init__(self, data, config: BPRConfig = None) -> None:
        super().__init__(data, config)
        d = self.config.embedding_size
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.user_embedding.weight)
        torch.nn.init.xavier_normal_(self.item_embedding.weight)

    def embed(self) -> Tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        u = self.user_embedding(users)
        i, j = self.item_embedding(pos), self.item_embedding(neg)
        bpr = bpr_loss((u * i).sum(dim=-1), (u * j).sum(dim=-1), batch)
        reg = self.config.reg_weight * emb_loss(u, i, j, batch=batch)
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
