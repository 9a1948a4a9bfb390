r"""The user co-occurrence aggregation of DualGNN and DRAGON
("DualGNN: Dual Graph Neural Network for Multimedia Recommendation", Wang et al.,
IEEE TMM 2021;
`"Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal Recommendation"
<https://arxiv.org/abs/2301.12097>`_, Zhou et al., ECAI 2023).

Each user :math:`u` aggregates the representations of its top-:math:`k`
co-occurring users :math:`v_1, \dots, v_k`
(:class:`~mambarec_pyg.data.transforms.UserCooccurrence`, counts :math:`c_{uv}`)
with softmax weights over the counts,

.. math::
    \mathbf{h}_u = \sum_{s=1}^{k} \frac{\exp(c_{u v_s})}
    {\sum_{t=1}^{k} \exp(c_{u v_t})} \mathbf{x}_{v_s},

a user without co-occurring users getting :math:`\mathbf{0}`. A user with
:math:`n < k` neighbours fills its list up to :math:`k` entries in training
(:func:`pad_neighbours`, MMRec's ``topk_sample``): each new entry repeats an entry
drawn uniformly from the list as it stands, so a neighbour's weight is its softmax
weight times its random multiplicity. Without padding (eval mode) the softmax runs
over the :math:`n` neighbours themselves, which is the padded weighting with every
neighbour at its expected multiplicity :math:`k / n`.

* :func:`neighbour_table` -- the ``[U, k]`` neighbour lists of the transform's edges;
* :func:`pad_neighbours` -- the padding draw;
* :func:`user_graph_matrix` -- the ``[U, U]`` aggregation matrix (rows are users,
  softmax weights, repeated neighbours summed), to propagate with
  :class:`~mambarec_pyg.nn.WeightedPropagation`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..data.graphs import sparse_from_edges

__all__ = ['neighbour_table', 'pad_neighbours', 'user_graph_matrix']


def neighbour_table(edge_index: Tensor, count: Tensor, num_users: int, k: int
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Each user's first ``k`` neighbours as a table.

    Args:
        edge_index: ``[2, E]`` (neighbour, user), grouped by user, each user's
            neighbours in rank order (as :class:`~mambarec_pyg.data.transforms.
            UserCooccurrence` stores them).
        count: ``[E]`` the co-occurrence counts.
        num_users: :math:`U`.
        k: entries per user.

    Returns:
        ``(index [U, k], count [U, k], length [U])``: the neighbours (``-1`` past a
        user's ``length``), their counts (float64, 0 past the length) and how many
        each user has (at most ``k``).
    """
    src, dst = edge_index[0].long(), edge_index[1].long()
    device = src.device
    length = torch.bincount(dst, minlength=num_users)
    start = torch.zeros(num_users + 1, dtype=torch.long, device=device)
    start[1:] = length.cumsum(0)
    rank = torch.arange(dst.numel(), device=device) - start[dst]
    keep = rank < k
    index = torch.full((num_users, k), -1, dtype=torch.long, device=device)
    table = torch.zeros(num_users, k, dtype=torch.float64, device=device)
    index[dst[keep], rank[keep]] = src[keep]
    table[dst[keep], rank[keep]] = count[keep].double()
    return index, table, length.clamp(max=k)


def pad_neighbours(index: Tensor, count: Tensor, length: Tensor,
                   generator: Optional[torch.Generator] = None
                   ) -> Tuple[Tensor, Tensor]:
    r"""The lists of users with :math:`0 < n < k` neighbours filled up to :math:`k`
    entries: entry :math:`t = n, \dots, k-1` repeats entry :math:`j` of the list as
    it stands, :math:`j` uniform in :math:`\{0, \dots, t-1\}` (MMRec's
    ``np.random.randint(0, len(sample))`` on the growing list). Users without
    neighbours keep an empty list.

    Args:
        index, count, length: as :func:`neighbour_table` returns them.
        generator: the random generator (default: the global one).

    Returns:
        ``(index [U, k], count [U, k])``, new tensors.
    """
    index, count = index.clone(), count.clone()
    k = index.size(1)
    for t in range(1, k):
        rows = ((length > 0) & (length <= t)).nonzero().view(-1)
        if rows.numel() == 0:
            continue
        pick = (torch.rand(rows.numel(), generator=generator,
                           device=index.device) * t).long().clamp_(max=t - 1)
        index[rows, t] = index[rows, pick]
        count[rows, t] = count[rows, pick]
    return index, count


def user_graph_matrix(index: Tensor, count: Tensor, num_users: int,
                      dtype: Optional[torch.dtype] = None) -> Tensor:
    r"""The aggregation matrix :math:`\mathbf{W}` ``[U, U]`` (CSR, rows are the
    aggregating users) with :math:`\mathbf{W}_{uv}` the sum of the softmax weights
    of the entries of :math:`u`'s list that are :math:`v` (the softmax over the
    list's valid entries, ``index >= 0``), so :math:`\mathbf{h} = \mathbf{W}
    \mathbf{x}`."""
    valid = index >= 0
    logits = count.double().masked_fill(~valid, float('-inf'))
    top = logits.amax(dim=1, keepdim=True).clamp(min=0.0)  # finite for empty rows
    weight = torch.exp(logits - top)
    weight = weight / weight.sum(dim=1, keepdim=True).clamp(min=1e-300)
    users = torch.arange(index.size(0), device=index.device).view(-1, 1)
    users = users.expand_as(index)
    edge_index = torch.stack([index[valid], users[valid]])
    return sparse_from_edges(edge_index, weight[valid], (num_users, num_users),
                             dtype=dtype or torch.get_default_dtype(), layout='csr')
