r"""Edge pruning of the user-item graph, drawn once per training epoch (FREEDOM's
degree-sensitive pruning, LayerGCN's alternation of it with uniform pruning).

* :func:`degree_sensitive_sample` -- :math:`n` of the :math:`|E|` training edges
  without replacement, with probability proportional to their weights
  :math:`1/\sqrt{d_u d_i}` (`"A Tale of Two Graphs"
  <https://arxiv.org/abs/2211.06924>`_): edges between high-degree nodes are dropped
  more often;
* :func:`uniform_sample` -- :math:`n` edges uniformly without replacement;
* :func:`pruned_adjacency` -- the kept edges re-normalised,
  :math:`\tilde w_{ui} = 1/\sqrt{(\tilde d_u + \epsilon)(\tilde d_i + \epsilon)}` with
  the kept degrees :math:`\tilde d`, mirrored into the symmetric
  :math:`(U + N) \times (U + N)` adjacency (users first).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..data.graphs import sparse_from_edges

__all__ = ['num_kept_edges', 'degree_sensitive_sample', 'uniform_sample',
           'pruned_adjacency']


def num_kept_edges(num_edges: int, dropout: float) -> int:
    r""":math:`\lfloor |E| (1 - p) \rfloor` (at least 1), as MMRec computes it."""
    return max(1, int(num_edges * (1.0 - dropout)))


def degree_sensitive_sample(weight: Tensor, num_kept: int,
                            generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Ids of ``num_kept`` edges drawn without replacement with probability
    proportional to ``weight`` (:func:`torch.multinomial`), in ascending order.

    Args:
        weight: ``[E]`` non-negative sampling weights (the edges' :math:`1/\sqrt{d_u
            d_i}`).
        num_kept: :math:`n \le E`.
        generator: the random generator (default: the global one).
    """
    keep = torch.multinomial(weight, num_kept, replacement=False, generator=generator)
    return keep.sort().values


def uniform_sample(num_edges: int, num_kept: int,
                   generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> Tensor:
    """Ids of ``num_kept`` of ``num_edges`` edges drawn uniformly without replacement
    (a random permutation's first entries), in ascending order."""
    perm = torch.randperm(num_edges, generator=generator, device=device)
    return perm[:num_kept].sort().values


def pruned_adjacency(user: Tensor, item: Tensor, num_users: int, num_items: int,
                     eps: float = 1e-7, dtype: Optional[torch.dtype] = None) -> Tensor:
    r"""The re-normalised, mirrored ``[U+N, U+N]`` CSR adjacency of the kept edges
    :math:`(u, i)`: both blocks carry
    :math:`1/\sqrt{(\tilde d_u + \epsilon)(\tilde d_i + \epsilon)}` with the kept
    degrees :math:`\tilde d` (MMRec's :math:`\epsilon = 10^{-7}`).

    Args:
        user, item: ``[n]`` the kept edges (distinct pairs).
        num_users, num_items: :math:`U`, :math:`N`.
        eps: added to the kept degrees.
        dtype: value dtype (default: the default dtype).
    """
    deg_user = torch.bincount(user, minlength=num_users).double() + eps
    deg_item = torch.bincount(item, minlength=num_items).double() + eps
    value = deg_user[user].rsqrt() * deg_item[item].rsqrt()
    item_node = item + num_users
    n = num_users + num_items
    edge_index = torch.stack([torch.cat([item_node, user]),
                              torch.cat([user, item_node])])
    return sparse_from_edges(edge_index, torch.cat([value, value]), (n, n),
                             dtype=dtype or torch.get_default_dtype(), layout='csr')
