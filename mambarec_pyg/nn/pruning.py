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
  :math:`(U + N) \times (U + N)` adjacency (users first);
* :class:`DegreeSensitivePruning` -- the three as a module: the training edges and
  their weights as buffers, and one call per epoch that draws the pruned adjacency
  (PGL's local principal graph, MMGCF's edge dropout).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..data.graphs import sparse_from_edges

__all__ = ['num_kept_edges', 'degree_sensitive_sample', 'uniform_sample',
           'pruned_adjacency', 'DegreeSensitivePruning']


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


class DegreeSensitivePruning(torch.nn.Module):
    r"""Degree-sensitive pruning of the training edges, drawn anew at each call.

    Keeps :math:`\lfloor |E| (1 - p) \rfloor` (at least one) of the :math:`|E|`
    distinct training pairs, drawn without replacement with probability proportional
    to :math:`1/\sqrt{d_u d_i}` (:func:`degree_sensitive_sample`), and returns their
    re-normalised, mirrored adjacency (:func:`pruned_adjacency`). The edges and their
    weights are non-persistent buffers (they follow ``.to()`` and stay out of the
    state dict).

    Args:
        r_hat (Tensor): the normalised user-item block :math:`\hat{\mathbf{R}}`
            ``[U, N]`` as a CSR matrix (its entries are the sampling weights).
        dropout (float): :math:`p`, the share of the edges dropped.
        eps (float): added to the kept degrees. (default: MMRec's :math:`10^{-7}`)

    **Shapes:**
        - **output of** :meth:`forward`: a CSR matrix :math:`(U + N, U + N)`
    """

    def __init__(self, r_hat: Tensor, dropout: float, eps: float = 1e-7) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f'DegreeSensitivePruning: expected 0 <= dropout < 1, got '
                             f'{dropout!r}')
        self.num_users, self.num_items = int(r_hat.size(0)), int(r_hat.size(1))
        self.dropout = float(dropout)
        self.eps = float(eps)
        crow = r_hat.crow_indices()
        user = torch.repeat_interleave(torch.arange(self.num_users,
                                                    device=crow.device), crow.diff())
        self.register_buffer('edge_user', user, persistent=False)
        self.register_buffer('edge_item', r_hat.col_indices().clone(), persistent=False)
        self.register_buffer('edge_weight', r_hat.values().clone(), persistent=False)

    @property
    def num_kept(self) -> int:
        """The number of edges kept per draw."""
        return num_kept_edges(self.edge_weight.numel(), self.dropout)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        """Ids of the kept edges (into :attr:`edge_user` / :attr:`edge_item`), in
        ascending order."""
        return degree_sensitive_sample(self.edge_weight, self.num_kept, generator)

    def forward(self, dtype: Optional[torch.dtype] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
        """The pruned adjacency of one draw; without ``generator``, one seeded from
        the global torch RNG (so a seeded or resumed run draws the same graphs)."""
        if generator is None:
            seed = int(torch.randint(0, 2**62, (1, )).item())
            generator = torch.Generator(device=self.edge_weight.device)
            generator.manual_seed(seed)
        return self.adjacency(self.sample(generator), dtype)

    def adjacency(self, keep: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The re-normalised, mirrored adjacency of the edges ``keep`` (ids into
        :attr:`edge_user` / :attr:`edge_item`, e.g. from :meth:`sample`)."""
        return pruned_adjacency(self.edge_user[keep], self.edge_item[keep],
                                self.num_users, self.num_items, self.eps, dtype)

    def extra_repr(self) -> str:
        return (f'{self.edge_weight.numel()} edges, dropout={self.dropout}, '
                f'eps={self.eps}')
