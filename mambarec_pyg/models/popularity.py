r"""Most-popular ranking: the floor of every comparison table.

Every user gets the same ranking: items by their number of training interactions
(distinct users), most first. Nothing is learned, so the trainer evaluates it once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from torch import Tensor

from ..config import ModelConfig
from ..data.index import training_index
from ..data.sampling import BPRBatch
from .base import Recommender
from .registry import register

__all__ = ['Popularity', 'PopularityConfig']


@dataclass
class PopularityConfig(ModelConfig):
    """Most-popular ranking has no options."""


@register('popularity')
class Popularity(Recommender):
    r"""Ranks items by their number of training interactions.

    As embeddings: every user is :math:`1` and item :math:`i` is its training count
    :math:`n_i`, so the score of :math:`(u, i)` is :math:`n_i`.
    """

    config_class = PopularityConfig
    reference = 'most-popular ranking (no learning)'

    def __init__(self, data, config: PopularityConfig = None) -> None:
        super().__init__(data, config)
        counts = training_index(data).item_degree
        self.register_buffer('item_score', counts.to(torch.get_default_dtype())
                             .view(-1, 1))

    def embed(self) -> Tuple[Tensor, Tensor]:
        ones = self.item_score.new_ones(self.num_users, 1)
        return ones, self.item_score

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        raise RuntimeError('Popularity has nothing to train')
