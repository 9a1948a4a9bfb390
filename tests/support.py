"""Helpers shared by test files: a small matrix-factorisation model registered from
the tests, as a user would register their own model."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mambarec_pyg.config import ModelConfig
from mambarec_pyg.models import Recommender, register


@dataclass
class MFConfig(ModelConfig):
    """BPR matrix factorisation for the tests."""

    #: embedding width.
    dim: int = 16
    #: dropout on the user embeddings in training mode (so the torch RNG matters).
    dropout: float = 0.1
    #: weight of the L2 penalty.
    reg_weight: float = 1e-4


@register('test_mf')
class MF(Recommender):
    """BPR matrix factorisation with dropout (a model defined outside the package)."""

    config_class = MFConfig

    def __init__(self, data, config: MFConfig = None):
        super().__init__(data, config)
        dim = self.config.dim
        self.user = torch.nn.Parameter(torch.empty(self.num_users, dim))
        self.item = torch.nn.Parameter(torch.empty(self.num_items, dim))
        torch.nn.init.xavier_uniform_(self.user)
        torch.nn.init.xavier_uniform_(self.item)
        self.epochs_started = []

    def embed(self) -> Tuple[Tensor, Tensor]:
        return F.dropout(self.user, self.config.dropout, self.training), self.item

    def on_epoch_start(self, epoch: int):
        self.epochs_started.append(epoch)
        return {'started': epoch}

    def loss(self, batch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        u, i = self.embed()
        eu, ep, en = u[users], i[pos], i[neg]
        bpr = -F.logsigmoid((eu * ep).sum(-1) - (eu * en).sum(-1)).mean()
        reg = self.config.reg_weight * (eu.pow(2).sum() + ep.pow(2).sum() +
                                        en.pow(2).sum()) / 2 / batch.nominal_size
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
