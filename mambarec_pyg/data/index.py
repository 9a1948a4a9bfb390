r"""The training interactions, indexed once per dataset.

:class:`TrainingIndex` is the one structure every consumer of the training pairs
shares: the negative sampler (:class:`~mambarec_pyg.data.sampling.TrainingPairs`),
the graph transforms (degrees of :class:`~mambarec_pyg.data.transforms.UserItemNorm`),
the evaluator (training items masked per user) and ``recommend`` (training items
excluded). :func:`training_index` builds it once per data object and returns the same
index until the training edges change.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from ..ranking import ItemLists
from ..utils import cached_on, tensor_fingerprint
from .errors import DataError

__all__ = ['TrainingIndex', 'training_index', 'UI']

#: The edge type of user-item interactions.
UI: Tuple[str, str, str] = ('user', 'interacts', 'item')


class TrainingIndex:
    r"""Sorted views of the training interactions ``(u, i)``.

    Args:
        edge_index (LongTensor): ``[2, E]`` training interactions (row 0 users,
            row 1 items), in file order; repeated pairs are kept here (the sampler
            uses each interaction once per epoch) and counted once everywhere else.
        num_users (int): :math:`U`.
        num_items (int): :math:`N`.

    Attributes:
        edge_index: the interactions as given (on the CPU, ``long``).
        keys: the distinct pairs encoded ``u * N + i``, sorted.
        user_items (ItemLists): each user's distinct training items, sorted (CSR).
        pool: the items that occur in training, sorted (MMRec's negative pool).
        user_degree, item_degree: distinct training items per user, distinct
            training users per item.

    Raises:
        DataError: a malformed ``edge_index`` or an id out of range (naming the
            column and the id), checked here once instead of per batch.
    """

    def __init__(self, edge_index: Tensor, num_users: int, num_items: int) -> None:
        if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
                edge_index.size(0) != 2:
            shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else None
            raise DataError(f'training edge_index: expected a tensor of shape [2, E] '
                            f'(users, items), got {shape or type(edge_index).__name__}')
        if edge_index.is_floating_point() or edge_index.is_complex():
            raise DataError(f'training edge_index: expected integer ids, got '
                            f'{edge_index.dtype}')
        edge_index = edge_index.detach().to('cpu', torch.long)
        self.num_users, self.num_items = int(num_users), int(num_items)
        for row, what, n in ((0, 'user', self.num_users), (1, 'item', self.num_items)):
            ids = edge_index[row]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
                bad = int(((ids < 0) | (ids >= n)).nonzero()[0, 0])
                raise DataError(f'training edge_index[:, {bad}] has {what} id '
                                f'{int(ids[bad])}, expected 0 <= id < {n}')
        self.edge_index = edge_index
        N = self.num_items
        self.keys = torch.unique(edge_index[0] * N + edge_index[1])
        users, items = self.keys // N, self.keys % N
        self.user_degree = torch.bincount(users, minlength=self.num_users)
        self.item_degree = torch.bincount(items, minlength=N)
        rowptr = torch.zeros(self.num_users + 1, dtype=torch.long)
        rowptr[1:] = self.user_degree.cumsum(0)
        self.user_items = ItemLists.from_csr(rowptr, items)
        self.pool = torch.unique(items)

    @property
    def num_pairs(self) -> int:
        """Training interactions, repeats included (one BPR triple each per epoch)."""
        return self.edge_index.size(1)

    @property
    def num_distinct(self) -> int:
        """Distinct training pairs."""
        return self.keys.numel()

    @property
    def has_repeats(self) -> bool:
        return self.num_distinct != self.num_pairs

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        """Boolean mask: is ``(users[k], items[k])`` a training pair?"""
        keys = self.keys.to(users.device)
        query = users.long() * self.num_items + items.long()
        idx = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
        return keys[idx] == query if keys.numel() else torch.zeros_like(query,
                                                                          dtype=torch.bool)

    def distinct_pairs(self) -> Tuple[Tensor, Tensor]:
        """``(users, items)`` of the distinct pairs, sorted by user, then item."""
        return self.keys // self.num_items, self.keys % self.num_items


def training_index(data) -> TrainingIndex:
    """The :class:`TrainingIndex` of ``data[UI].edge_index``, built once per data
    object (and again only when the edges or the node counts change)."""
    try:
        edge_index = data[UI].edge_index
        num_users = int(data['user'].num_nodes)
        num_items = int(data['item'].num_nodes)
    except (KeyError, AttributeError, TypeError):
        raise DataError("expected data['user'].num_nodes, data['item'].num_nodes and "
                        "the training interactions data['user', 'interacts', "
                        "'item'].edge_index") from None
    fingerprint = (tensor_fingerprint(edge_index), num_users, num_items)
    return cached_on(data, 'training_index',
                     lambda: TrainingIndex(edge_index, num_users, num_items),
                     fingerprint)
