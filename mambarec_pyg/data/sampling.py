r"""BPR training triples: every training pair once per epoch, one uniform negative each.

The protocol of MMRec (docs/reference.md §1), which the published MambaRec numbers
were produced with:

* every training interaction :math:`(u, i)` appears once per epoch, in a random order,
  cut into consecutive batches of :math:`B`;
* each pair gets one negative item :math:`j` drawn uniformly from the items that occur
  in the training split, redrawn while :math:`j` is one of :math:`u`'s training items,
  so :math:`j \sim \mathcal{U}(\mathcal{I}_{train} \setminus \mathcal{I}_u)`.

Why the library samples itself instead of calling
:func:`torch_geometric.utils.structured_negative_sampling` (which accepts bipartite ids
when ``num_nodes`` is the number of items, and draws the same way -- encode a pair as
``u * N + j``, reject training pairs, redraw):

* **the pool:** MMRec draws negatives only from the items that occur in the training
  split; ``structured_negative_sampling`` draws from every id in ``[0, num_nodes)``.
  The two coincide when every item has a training interaction (a test checks that
  they then draw from the same distribution), but the MMRec files can hold items
  that occur only in validation or test;
* **a generator of its own:** the draws come from a seeded :class:`torch.Generator`
  that belongs to the sampler, so the training pairs of an epoch do not depend on
  how many random numbers the model consumed (dropout, noise) and a resumed run
  replays them from the saved generator state;
* **no per-call set-up:** the sorted training keys and the pool are built once per
  dataset (:class:`~mambarec_pyg.data.index.TrainingIndex`) and membership is one
  :func:`torch.searchsorted` (``O(log E)`` per query), where
  ``structured_negative_sampling`` rebuilds its index with :func:`numpy.isin` on the
  CPU at every call.

Rejection is vectorised: all pairs draw at once; only the collisions are redrawn, again
all at once. After ``max_rounds`` rounds the few pairs still colliding (users who own
almost every training item) are finished by exact complement sampling
(:func:`_sample_complement`), which draws from the same distribution without
rejection; a user who owns *every* training item has no valid negative and is reported
as an error before anything is drawn.
"""
from __future__ import annotations

from typing import Iterator, Optional, Union

import torch
from torch import Tensor

from ..errors import NegativeSamplingError
from .errors import DataError
from .index import TrainingIndex

__all__ = ['sample_negatives', 'TrainingPairs', 'BPRBatch', 'BatchShard',
           'NegativeSamplingError']


class BatchShard:
    """This process's rows of a global batch, under data parallelism.

    Set by the distributed trainer on the :class:`BPRBatch` of each process: the
    global batch of ``num_global`` triples is cut into contiguous slices, one per
    process, and this process holds rows ``[start, stop)``. ``gather`` is a
    differentiable all-gather of rows (``[stop - start, ...]`` on each process ->
    ``[num_global, ...]`` in global order on every process).
    """

    __slots__ = ('rank', 'world_size', 'start', 'stop', 'num_global', 'gather_fn')

    def __init__(self, rank: int, world_size: int, start: int, stop: int,
                 num_global: int, gather_fn) -> None:
        self.rank, self.world_size = int(rank), int(world_size)
        self.start, self.stop, self.num_global = int(start), int(stop), int(num_global)
        self.gather_fn = gather_fn

    def __repr__(self) -> str:
        return (f'BatchShard(rank={self.rank}/{self.world_size}, rows '
                f'[{self.start}, {self.stop}) of {self.num_global})')


class BPRBatch(tuple):
    r"""One batch of BPR triples ``(users, pos, neg)`` (a tuple of three ``LongTensor``
    of the same length): what :meth:`Recommender.loss
    <mambarec_pyg.models.Recommender.loss>` receives.

    :attr:`size` is the configured batch size :math:`B`, also for a shorter last
    batch (MMRec's per-batch regularisers divide by it); ``None``: the batch's own
    length (:attr:`nominal_size`).

    **Data parallelism.** Under ``torchrun`` each process receives its slice of the
    global batch (:attr:`shard`; ``None`` in a single process). A model's loss is then
    written with the batch's reductions so that the result does not depend on the
    number of processes:

    * :meth:`mean` / :meth:`sum` for a term that is a mean / sum over the triples
      (the BPR term, per-row regularisers divided by :attr:`size`);
    * :meth:`gather` for the rows entering a term that couples the triples of the
      batch (in-batch InfoNCE, MMD, a mean of a nonlinear function of batch sums):
      every process then computes that term over the whole global batch;
    * :meth:`local` for random numbers drawn per triple: draw them for
      :attr:`num_global` rows (the same draws on every process) and keep this
      process's rows.

    Terms that do not depend on the batch (a penalty on whole tables) are written as
    usual. A process may hold no triple (a global batch shorter than the number of
    processes); the reductions then contribute 0 and the gathered rows are the
    others'. On one process the reductions are the plain ones (``values.mean()``,
    ``values.sum()``, the identity). On several, a per-triple term is this process's
    share times the number of processes: the mean over the processes is the
    single-process value, and so is the mean of their gradients (what
    ``DistributedDataParallel`` computes).
    """

    def __new__(cls, users: Tensor, pos: Tensor, neg: Tensor,
                size: Optional[int] = None,
                shard: Optional[BatchShard] = None) -> 'BPRBatch':
        self = super().__new__(cls, (users, pos, neg))
        self.size = size
        self.shard = shard
        return self

    def __getnewargs__(self):
        return (*self, self.size, self.shard)

    @property
    def users(self) -> Tensor:
        return self[0]

    @property
    def pos(self) -> Tensor:
        return self[1]

    @property
    def neg(self) -> Tensor:
        return self[2]

    @property
    def nominal_size(self) -> int:
        """:attr:`size`, or the number of triples of the global batch when it is
        ``None``."""
        return int(self.size) if self.size is not None else self.num_global

    @property
    def num_global(self) -> int:
        """Triples in the global batch (all processes); here, on one process."""
        return self.shard.num_global if self.shard is not None else int(self[0].numel())

    def mean(self, values: Tensor) -> Tensor:
        """The mean over the global batch of a per-triple quantity ``values``
        (``[b]`` or ``[b, ...]``, rows = this process's triples); see the class
        doc for its value on several processes."""
        if self.shard is None:
            return values.mean()
        per_row = 1
        for n in values.shape[1:]:
            per_row *= int(n)
        denom = max(self.shard.num_global * per_row, 1)
        return values.sum() * (self.shard.world_size / denom)

    def sum(self, values: Tensor) -> Tensor:
        """The sum over the global batch of a per-triple quantity ``values`` (``[b,
        ...]``), or of a term that is already this process's sum over its triples (a
        0-dim tensor; e.g. LGMRec's contrastive term, a sum over the triples with
        every user as a candidate)."""
        if self.shard is None:
            return values.sum()
        return values.sum() * self.shard.world_size

    def gather(self, rows: Tensor) -> Tensor:
        """``rows`` (this process's triples first) from every process, in the order
        of the global batch, with gradients flowing back to each process's rows."""
        if self.shard is None:
            return rows
        return self.shard.gather_fn(rows)

    def local(self, rows: Tensor) -> Tensor:
        """This process's rows of a tensor over the global batch (``[num_global,
        ...]``)."""
        if self.shard is None:
            return rows
        return rows[self.shard.start:self.shard.stop]

    def __repr__(self) -> str:
        return (f'BPRBatch(triples={self[0].numel()}, size={self.size}'
                + (f', {self.shard!r}' if self.shard is not None else '') + ')')


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

    def __init__(self, edge_index: Union[Tensor, TrainingIndex],
                 num_items: Optional[int] = None, max_rounds: int = 16) -> None:
        if isinstance(edge_index, TrainingIndex):
            index = edge_index
        else:
            if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or \
                    edge_index.size(0) != 2:
                raise ValueError(f'edge_index: expected a [2, E] tensor of (user, item) '
                                 f'pairs, got shape {tuple(edge_index.shape)}')
            if num_items is None:
                raise ValueError('num_items: required with an edge_index')
            ei = edge_index.detach().to('cpu', torch.long)
            if ei.numel() and int(ei[0].min()) < 0:
                raise ValueError('edge_index: user ids must be >= 0')
            num_users = int(ei[0].max()) + 1 if ei.numel() else 0
            try:
                index = TrainingIndex(ei, num_users, int(num_items))
            except DataError as e:
                raise ValueError(str(e)) from None
        if index.num_pairs == 0:
            raise NegativeSamplingError('edge_index: there are no training '
                                        'interactions to sample from')
        self.index = index
        self.edge_index = index.edge_index
        self.num_items = index.num_items
        self.max_rounds = int(max_rounds)
        #: the items that occur in training, sorted: the negative pool.
        self.candidates = index.pool
        #: sorted, distinct training keys ``u * N + i``.
        self.keys = index.keys
        owned = index.user_degree
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
        users, items = index.distinct_pairs()
        pos = torch.searchsorted(self.candidates, items)
        ptr = index.user_items.rowptr
        rank = torch.arange(self.keys.numel()) - ptr[users]
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
        return self.index.contains(users, items)

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
            yield BPRBatch(users[sl], pos[sl], neg[sl], batch_size)

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
