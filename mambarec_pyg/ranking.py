r"""Top-:math:`k` ranking of all items with each user's known items excluded.

One implementation serves evaluation (:class:`~mambarec_pyg.train.Evaluator`) and
serving (:meth:`MambaRec.recommend <mambarec_pyg.models.mambarec.MambaRec.recommend>`,
:func:`~mambarec_pyg.train.recommend`): scores are the dot products of user and item
embeddings, computed for a batch of users at a time; the user's excluded items (the
training interactions) get :math:`-\infty`; ``torch.topk`` picks the best :math:`k`.
The embeddings are dense tables, or sparse COO matrices for a model whose scores are
a sparse product (content-based kNN: users as their training items, items as their
similarity columns); :func:`score_rows` computes a batch's scores either way.

Per-user item lists are kept as CSR (:class:`ItemLists`): a flat item array sorted by
row plus row pointers, so a contiguous range of rows is a slice and any list of rows is
gathered with two ``repeat_interleave`` calls, on CPU or CUDA, with no Python loop per
user.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ['ItemLists', 'rank_items', 'score_rows', 'transpose_items']


class ItemLists:
    r"""Item lists per row (a user, or a user's position in an evaluated list) as CSR.

    Args:
        row (LongTensor): the row of every entry.
        col (LongTensor): the item of every entry.
        num_rows (int): the number of rows (rows without entries are empty lists).

    Within a row, items are sorted and duplicates kept.
    """

    def __init__(self, row: Tensor, col: Tensor, num_rows: int) -> None:
        row, col = row.long(), col.long()
        if row.numel() and (int(row.min()) < 0 or int(row.max()) >= num_rows):
            raise ValueError(f'ItemLists: rows must be in 0..{num_rows - 1}')
        width = int(col.max()) + 1 if col.numel() else 1
        perm = torch.argsort(row * width + col)
        self.col = col[perm]
        self.rowptr = torch.zeros(num_rows + 1, dtype=torch.long, device=row.device)
        self.rowptr[1:] = torch.bincount(row, minlength=num_rows).cumsum(0)

    @classmethod
    def from_csr(cls, rowptr: Tensor, col: Tensor) -> 'ItemLists':
        """Wrap existing row pointers and a row-sorted item array (no copy)."""
        out = cls.__new__(cls)
        out.rowptr, out.col = rowptr, col
        return out

    @property
    def num_rows(self) -> int:
        return self.rowptr.numel() - 1

    def to(self, device) -> 'ItemLists':
        return ItemLists.from_csr(self.rowptr.to(device), self.col.to(device))

    def slice(self, start: int, end: int) -> Tuple[Tensor, Tensor]:
        """``(rows - start, items)`` of the entries of rows ``start..end-1``."""
        a, b = int(self.rowptr[start]), int(self.rowptr[end])
        counts = self.rowptr[start + 1:end + 1] - self.rowptr[start:end]
        rows = torch.repeat_interleave(
            torch.arange(end - start, device=self.col.device), counts)
        return rows, self.col[a:b]

    def gather(self, rows: Tensor) -> Tuple[Tensor, Tensor]:
        """``(position in rows, items)`` of the entries of the given rows (rows may
        repeat)."""
        rows = rows.to(self.rowptr.device, torch.long)
        start, counts = self.rowptr[rows], self.rowptr[rows + 1] - self.rowptr[rows]
        pos = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device),
                                      counts)
        first = torch.repeat_interleave(start - (counts.cumsum(0) - counts), counts)
        return pos, self.col[first + torch.arange(pos.numel(), device=rows.device)]


def transpose_items(item_emb: Tensor) -> Tensor:
    """``item_emb.t()`` ready for :func:`score_rows`: contiguous when dense,
    coalesced when sparse (COO)."""
    return item_emb.t().coalesce() if item_emb.is_sparse else item_emb.t().contiguous()


def score_rows(user_emb: Tensor, item_t: Tensor, users: Tensor) -> Tensor:
    r"""The dense scores ``user_emb[users] @ item_t`` ``[len(users), N]``.

    ``user_emb`` ``[U, d]`` is dense, or a sparse COO matrix whose rows are gathered
    with :func:`torch.index_select`; ``item_t`` ``[d, N]`` (:func:`transpose_items`)
    is dense, or sparse COO with a sparse ``user_emb`` (the product is then sparse
    and made dense here). Same values as the dense product of the dense tables.
    """
    if user_emb.is_sparse:
        with warnings.catch_warnings():  # sparse x sparse goes through beta CSR code
            warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support')
            out = torch.sparse.mm(user_emb.index_select(0, users), item_t)
        return out.to_dense() if out.is_sparse else out
    return user_emb[users] @ item_t


@torch.no_grad()
def rank_items(user_emb: Tensor, item_emb: Tensor, users: Tensor, k: int,
               exclude: Optional[ItemLists] = None,
               batch_size: int = 4096) -> Tuple[Tensor, Tensor]:
    r"""The best ``k`` items for each of ``users`` by ``user_emb @ item_emb.T``.

    Args:
        user_emb, item_emb: ``[U, d]`` and ``[N, d]`` embeddings (dense, or sparse
            COO: :func:`score_rows`).
        users (LongTensor): user ids (rows of ``user_emb``; may repeat).
        k (int): items per user (``k > N`` gives ``N`` columns).
        exclude (ItemLists, optional): items per user id never to return.
        batch_size (int): users scored at a time (bounds the ``[batch, N]`` scores).

    Returns:
        ``(items [len(users), min(k, N)], scores)``, best first. An excluded item is
        never returned: a user with fewer candidates than columns gets ``-1`` (score
        :math:`-\infty`) in the remaining places.
    """
    num_items = item_emb.size(0)
    if k < 1:
        raise ValueError(f'k: expected k >= 1, got {k}')
    k = min(int(k), num_items)
    users = users.to(user_emb.device, torch.long).view(-1)
    item_t = transpose_items(item_emb)
    items, scores = [], []
    for start in range(0, users.numel(), batch_size):
        batch = users[start:start + batch_size]
        s = score_rows(user_emb, item_t, batch)
        if exclude is not None:
            rows, cols = exclude.gather(batch)
            s[rows, cols] = float('-inf')
        top = s.topk(k, dim=1)
        idx = top.indices
        if exclude is not None:
            idx = idx.masked_fill(top.values == float('-inf'), -1)
        items.append(idx)
        scores.append(top.values)
    if not items:
        return (torch.empty(0, k, dtype=torch.long, device=user_emb.device),
                user_emb.new_empty(0, k))
    return torch.cat(items), torch.cat(scores)
