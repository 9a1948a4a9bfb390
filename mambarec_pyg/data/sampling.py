r"""BPR training triples: every training pair once per epoch, one uniform negative each.

The protocol of MMRec (docs/reference.md §1), which the published MambaRec numbers
were produced with:

* every training interaction :math:`(u, i)` appears once per epoch, in a random order,
  cut into consecutive batches of :math:`B`;
* each pair gets one negative item :math:`j` drawn uniformly from the items that occur
  in the training split, redrawn while :math:`j` is one of :math:`u`'s training items,
  so :math:`j \sim \mathcal{U}(\mathcal{I}_{train} \setminus \mathcal{I}_u)`.

Why not :func:`torch_geometric.utils.structured_negative_sampling`: it draws from
*all* node ids of a homogeneous graph (``randint(num_nodes)``), so on a bipartite
user-item graph it would need user and item ids in one space and would return users
and items that never occur in training; it also draws from the global RNG (no
:class:`torch.Generator`, so an epoch cannot be replayed from a saved state) and tests
membership with :func:`numpy.isin` on the CPU. Here the same idea -- encode a pair as
``u * N + j`` and test it against the encoded training pairs -- is written with a
:class:`torch.Generator`, the item pool restricted to training items, and
:func:`torch.searchsorted` on the sorted training keys (``O(E log E)`` once, then
``O(log E)`` per query, on any device).

Rejection is vectorised: all pairs draw at once; only the collisions are redrawn, again
all at once. After ``max_rounds`` rounds the few pairs still colliding (users who own
almost every training item) are finished by exact complement sampling
(:func:`_sample_complement`), which draws from the same distribution without
rejection; a user who owns *every* training item has no valid negative and is reported
as an error before anything is drawn.
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ['sample_negatives', 'TrainingPairs', 'BPRBatch', 'NegativeSamplingError']


class NegativeSamplingError(ValueError):
    """No negative item can be drawn for some user."""


class BPRBatch(NamedTuple):
    """One batch of BPR triples (user, positive item, negative item)."""

    users: Tensor
    pos: Tensor
    neg: Tensor


class TrainingPairs:
    r"""Per-epoch BPR triples from the training interactions.

    Precomputes once what every epoch needs: the pool of items that occur in training,
    the sorted keys ``u * N + i`` of the training pairs, and each user's position in
    the pool's complement (for exact sampling when rejection is slow).

    Args:
        edge_index (Tensor): training interactions ``[2, E]``, row 0 users, row 1
            items. Duplicates are kept as separate training pairs (each interaction
            once per epoch), as MMRec does.
        num_items (int): :math:`N`, the number of item ids.
        max_rounds (int): rejection rounds before the remaining collisions are
            finished by exact complement sampling.

    Example::

        pairs = TrainingPairs(data['user', 'interacts', 'item'].edge_index, N)
        g = torch.Generator().manual_seed(999)
        for users, pos, neg in pairs.epoch(batch_size=2048, generator=g):
            ...
    """

    def __init__(self, edge_index: Tensor, num_items: int, max_rounds: int = 16) -> None:
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f'edge_index: expected a [2, E] tensor of (user, item) '
                             f'pairs, got shape {tuple(edge_index.shape)}')
        if edge_index.size(1) == 0:
            raise NegativeSamplingError('edge_index: there are no training '
                                        'interactions to sample from')
        edge_index = edge_index.detach().to('cpu', torch.long)
        num_items = int(num_items)
        if int(edge_index[1].min()) < 0 or int(edge_index[1].max()) >= num_items:
            raise ValueError(f'edge_index: item ids must lie in [0, {num_items}), got '
                             f'[{int(edge_index[1].min())}, {int(edge_index[1].max())}]')
        if int(edge_index[0].min()) < 0:
            raise ValueError('edge_index: user ids must be >= 0')
        self.edge_index = edge_index
        self.num_items = num_items
        self.max_rounds = int(max_rounds)
        #: the items that occur in training, sorted: the negative pool.
        self.candidates = torch.unique(edge_index[1])
        keys = torch.unique(edge_index[0] * num_items + edge_index[1])  # sorted
        #: sorted, distinct training keys ``u * N + i``.
        self.keys = keys
        users = keys // num_items
        num_users = int(edge_index[0].max()) + 1
        owned = torch.bincount(users, minlength=num_users)
        full = (owned >= self.candidates.numel()).nonzero().view(-1)
        if full.numel() > 0:
            u = int(full[0])
            raise NegativeSamplingError(
                f'user {u} has interacted with every one of the '
                f'{self.candidates.numel()} items in the training split, so no '
                f'negative item can be drawn for it ({full.numel()} such user(s)); '
                f'remove the user or add items')
        # For exact complement sampling: the owned items' positions in the pool,
        # minus their rank within the user, per user segment (non-decreasing).
        pos = torch.searchsorted(self.candidates, keys % num_items)
        ptr = torch.zeros(num_users + 1, dtype=torch.long)
        ptr[1:] = torch.cumsum(owned, 0)
        rank = torch.arange(keys.numel()) - ptr[users]
        self._num_owned = owned
        self._ptr = ptr
        # keys (u, pos - rank) sorted because pos - rank is non-decreasing per user
        self._gap_keys = users * (self.candidates.numel() + 1) + (pos - rank)

    @property
    def num_pairs(self) -> int:
        return self.edge_index.size(1)

    def num_batches(self, batch_size: int) -> int:
        return -(-self.num_pairs // batch_size)

    def is_training_pair(self, users: Tensor, items: Tensor) -> Tensor:
        """Boolean mask: is ``(users[k], items[k])`` a training interaction?"""
        query = users * self.num_items + items
        idx = torch.searchsorted(self.keys, query).clamp_(max=self.keys.numel() - 1)
        return self.keys[idx] == query

    def sample_negatives(self, users: Tensor,
                         generator: Optional[torch.Generator] = None) -> Tensor:
        """One negative item per entry of ``users`` (a CPU LongTensor)."""
        users = users.to('cpu', torch.long)
        if users.numel() > 0 and int(users.max()) >= self._num_owned.numel():
            raise ValueError(f'user {int(users.max())} has no training interaction')
        C = self.candidates.numel()
        neg = self.candidates[torch.randint(C, users.shape, generator=generator)]
        rest = self.is_training_pair(users, neg).nonzero().view(-1)
        rounds = 0
        while rest.numel() > 0 and rounds < self.max_rounds:
            redraw = self.candidates[torch.randint(C, rest.shape, generator=generator)]
            neg[rest] = redraw
            rest = rest[self.is_training_pair(users[rest], redraw)]
            rounds += 1
        if rest.numel() > 0:
            neg[rest] = self._sample_complement(users[rest], generator)
        return neg

    def _sample_complement(self, users: Tensor,
                           generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Exact uniform draw from :math:`\mathcal{I}_{train} \setminus \mathcal{I}_u`.

        Draw a rank :math:`r` uniform in :math:`[0, C - n_u)` and map it to the
        :math:`r`-th pool position not owned by :math:`u`: with the owned positions
        :math:`p_0 < p_1 < \dots` (rank :math:`k`), the answer is :math:`r + m` where
        :math:`m = |\{k : p_k - k \le r\}|`, found by one :func:`torch.searchsorted`
        over the per-user keys ``(u, p_k - k)``.
        """
        C = self.candidates.numel()
        free = (C - self._num_owned[users]).to(torch.float64)
        r = (torch.rand(users.shape, generator=generator, dtype=torch.float64) *
             free).long()
        r = torch.minimum(r, (free - 1).long())
        query = users * (C + 1) + r
        m = torch.searchsorted(self._gap_keys, query, right=True) - self._ptr[users]
        return self.candidates[r + m]

    def epoch(self, batch_size: int, generator: Optional[torch.Generator] = None,
              device: Optional[torch.device] = None) -> Iterator[BPRBatch]:
        """The batches of one epoch: all pairs shuffled, one negative each.

        The permutation and all negatives are drawn up front (on the CPU, from
        ``generator``), so the same generator state gives the same epoch on any
        device.
        """
        users, pos, neg = self.sample_epoch(generator)
        if device is not None:
            users, pos, neg = (t.to(device) for t in (users, pos, neg))
        for start in range(0, users.numel(), batch_size):
            sl = slice(start, start + batch_size)
            yield BPRBatch(users[sl], pos[sl], neg[sl])

    def sample_epoch(self, generator: Optional[torch.Generator] = None) -> BPRBatch:
        """All training pairs of one epoch, shuffled, each with one negative."""
        perm = torch.randperm(self.num_pairs, generator=generator)
        users = self.edge_index[0, perm]
        pos = self.edge_index[1, perm]
        neg = self.sample_negatives(users, generator)
        return BPRBatch(users, pos, neg)


def sample_negatives(edge_index: Tensor, num_items: int,
                     generator: Optional[torch.Generator] = None,
                     users: Optional[Tensor] = None, max_rounds: int = 16) -> Tensor:
    r"""One negative item per training pair (or per entry of ``users``).

    Negatives are uniform over the items that occur in ``edge_index`` and never one of
    the user's items in ``edge_index`` (see the module docstring for the method).

    Args:
        edge_index (Tensor): training interactions ``[2, E]`` (users, items).
        num_items (int): the number of item ids :math:`N`.
        generator (torch.Generator, optional): a CPU generator, for reproducible draws.
        users (Tensor, optional): draw for these users instead of ``edge_index[0]``.
        max_rounds (int): rejection rounds before exact complement sampling.

    Returns:
        LongTensor ``[E]`` (or ``[len(users)]``) of item ids, on ``edge_index``'s device.

    Raises:
        NegativeSamplingError: a user has interacted with every training item.

    For many epochs build :class:`TrainingPairs` once instead.
    """
    pairs = TrainingPairs(edge_index, num_items, max_rounds=max_rounds)
    if users is None:
        users = pairs.edge_index[0]
    return pairs.sample_negatives(users, generator).to(edge_index.device)
