r"""VBPR: BPR matrix factorisation with a content factor projected from the item
features (`"VBPR: Visual Bayesian Personalized Ranking from Implicit Feedback"
<https://arxiv.org/abs/1510.01784>`_, He & McAuley, AAAI 2016), as MMRec computes it
(``src/models/vbpr.py``; ../BASELINES.md §3.3).

A user has one vector :math:`\mathbf{p}_u \in \mathbb{R}^{2d}`; an item has an ID
factor :math:`\boldsymbol{\gamma}_i \in \mathbb{R}^{d}` and a content factor
projected from its frozen raw features :math:`\mathbf{f}_i` (all modalities
concatenated):

.. math::
    \mathbf{h}_i = \mathbf{W}\mathbf{f}_i + \mathbf{b}, \qquad
    \hat y_{ui} = \mathbf{p}_u^\top [\boldsymbol{\gamma}_i; \mathbf{h}_i],

    \mathcal{L} = -\frac{1}{B}\sum_b \log\sigma(\hat y_{u i^+} - \hat y_{u i^-})
    + \lambda \frac{\|\mathbf{P}_b\|_F + \|\mathbf{Q}_{b^+}\|_F +
    \|\mathbf{Q}_{b^-}\|_F}{B},

with :math:`\mathbf{Q}_i = [\boldsymbol{\gamma}_i; \mathbf{h}_i]` the :math:`2d`-wide
item representation: MMRec's ``EmbLoss`` (Frobenius norms, not squared) acts on the
projected content too. Initialisation as MMRec's: :math:`\mathbf{P}` and
:math:`\boldsymbol{\Gamma}` Xavier-uniform, :math:`\mathbf{W}` Xavier-normal,
:math:`\mathbf{b} = 0`. The raw features are buffers (not trained, not normalised).

On several processes (:mod:`~mambarec_pyg.train.distributed`) the BPR mean is
over the global batch (``batch.mean``) and each Frobenius norm is the global
batch's, from the gathered row norms (:func:`~mambarec_pyg.nn.losses.emb_loss`
with ``batch``).

Where MMRec's VBPR differs from the paper:

* no bias terms: the paper's score adds an item bias :math:`\beta_i` and a visual
  bias :math:`\boldsymbol{\beta}'^\top \mathbf{f}_i` (and offsets :math:`\alpha +
  \beta_u`, which cancel in BPR); MMRec's has none of them, and neither has this
  module;
* the user's :math:`2d` vector is the paper's :math:`\boldsymbol{\gamma}_u` and
  :math:`\boldsymbol{\theta}_u` side by side, and the paper's projection
  :math:`\mathbf{E}\mathbf{f}_i` has no bias, MMRec's :class:`~torch.nn.Linear`
  the bias :math:`\mathbf{b}` (initialised to 0, trained);
* the content is not only visual: MMRec concatenates the text and the image features
  (text first). Here :math:`\mathbf{f}_i` concatenates every modality of the data in
  ``data.modalities`` order (``('image', 'text')`` for the MMRec loader, so image
  first): a permutation of the projection's input columns, so the same model (only
  the initial random draws land on other columns).

MMRec's BPR loss is :math:`-\log(10^{-10} + \sigma(\cdot))`; here
:math:`\mathrm{softplus}(\hat y_{ui^-} - \hat y_{ui^+})`, the same value without the
:math:`10^{-10}` (see :mod:`~mambarec_pyg.models.bpr`).
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

__all__ = ['VBPR', 'VBPRConfig']


@dataclass
class VBPRConfig(ModelConfig):
    """VBPR (MMRec's ``VBPR.yaml``)."""

    #: width d of the item ID factor and of the projected content factor (the user
    #: vector is 2d wide).
    embedding_size: int = 64
    #: weight of the EmbLoss regulariser on the batch's 2d-wide user and item
    #: representations. MMRec's yaml lists only its grid (the same as BPR's); the
    #: default here is 1e-4, this package's BPR default (in that grid).
    reg_weight: float = 1e-4

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [2.0, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_range('model.reg_weight', self.reg_weight, 0.0)


@register('vbpr')
class VBPR(Recommender):
    """VBPR without bias terms, as MMRec has it (see the module docstring)."""

    config_class = VBPRConfig
    min_modalities = 1
    reference = ('He & McAuley, "VBPR: Visual Bayesian Personalized Ranking from '
                 'Implicit Feedback", AAAI 2016')

    def __init__(self, data, config: VBPRConfig = None) -> None:
        super().__init__(data, config)
        d = self.config.embedding_size
        dtype = torch.get_default_dtype()
        content = torch.cat([data['item'][m].detach().cpu().to(dtype)
                             for m in self.modalities], dim=1)
        # Derived from the data, which rebuilds the model: kept out of checkpoints.
        self.register_buffer('content', content, persistent=False)
        self.user_embedding = torch.nn.Embedding(self.num_users, 2 * d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.item_linear = torch.nn.Linear(content.size(1), d)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        torch.nn.init.xavier_normal_(self.item_linear.weight)
        torch.nn.init.zeros_(self.item_linear.bias)

    def item_representations(self) -> Tensor:
        r""":math:`[\boldsymbol{\gamma}_i; \mathbf{W}\mathbf{f}_i + \mathbf{b}]` of
        every item, ``[N, 2d]``."""
        return torch.cat([self.item_embedding.weight, self.item_linear(self.content)],
                         dim=1)

    def embed(self) -> Tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_representations()

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        item = self.item_representations()
        u, i, j = self.user_embedding(users), item[pos], item[neg]
        bpr = bpr_loss((u * i).sum(dim=-1), (u * j).sum(dim=-1), batch)
        reg = self.config.reg_weight * emb_loss(u, i, j, batch=batch)
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
