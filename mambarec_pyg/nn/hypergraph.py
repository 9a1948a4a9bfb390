r"""The hypergraph terms of LGMRec (`"LGMRec: Local and Global Graph Learning for
Multimodal Recommendation" <https://arxiv.org/abs/2312.16400>`_, Guo et al., AAAI
2024):

* :func:`hypergraph_propagation` -- the hypergraph layer through soft hyperedge
  assignments, :math:`\boldsymbol{\Lambda} = \mathbf{H}_i^\top\mathbf{E}_i`,
  :math:`\mathbf{E}_i' = \mathbf{H}_i\boldsymbol{\Lambda}`,
  :math:`\mathbf{E}_u' = \mathbf{H}_u\boldsymbol{\Lambda}`;
* :func:`hcl_loss` -- the hypergraph contrastive term (a sum over the batch with
  every row a candidate), with :func:`row_logsumexp_sum`, its blocked
  log-sum-exp with a hand-written backward pass.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import normalize_rows

__all__ = ['hypergraph_propagation', 'hcl_loss', 'row_logsumexp_sum',
           'BLOCK_ELEMENTS']


def hypergraph_propagation(h_item: Tensor, h_user: Tensor, items: Tensor,
                           num_layers: int) -> Tuple[Tensor, Tensor, Tensor]:
    r"""``num_layers`` hypergraph layers from the item embeddings ``items``:

    .. math::
        \boldsymbol{\Lambda} = \mathbf{H}_i^\top\mathbf{E}_i^{h}, \quad
        \mathbf{E}_i^{h+1} = \mathbf{H}_i\boldsymbol{\Lambda}, \quad
        \mathbf{E}_u^{h+1} = \mathbf{H}_u\boldsymbol{\Lambda}.

    Args:
        h_item: the items' hyperedge assignments :math:`\mathbf{H}_i`.
        h_user: the users' hyperedge assignments :math:`\mathbf{H}_u`.
        items: the item embeddings :math:`\mathbf{E}_i^0`.
        num_layers: the number of layers (at least 1).

    **Shapes:**
        - **input:** :math:`(N, K)`, :math:`(U, K)`, :math:`(N, d)`
        - **output:** ``(user, item, hyperedges)`` of the last layer:
          :math:`(U, d)`, :math:`(N, d)`, :math:`(K, d)`
    """
    user = hyperedges = None
    for _ in range(num_layers):
        hyperedges = h_item.t() @ items
        items = h_item @ hyperedges
        user = h_user @ hyperedges
    return user, items, hyperedges


#: logits per block in :func:`row_logsumexp_sum` (4 MiB in float32: a block stays
#: in cache from its product through its exponential and sums).
BLOCK_ELEMENTS = 1 << 20
#: the largest logit range 2 * bound for which :func:`row_logsumexp_sum` shifts by
#: the bound instead of the row maximum (exp(-60) is far from float32 underflow).
_MAX_SHIFT_RANGE = 60.0


def _shifted_logits(a: Tensor, c_ext: Tensor, shift: Tensor) -> Tensor:
    r"""``a @ c.t() - shift[:, None]`` as one product: ``c_ext = [c, 1]``."""
    return torch.cat([a, -shift.unsqueeze(1)], dim=1) @ c_ext.t()


class _RowLogSumExpSum(torch.autograd.Function):
    r""":math:`\sum_b w_b \log\sum_n \exp(\mathbf{a}_b^\top\mathbf{c}_n)` over blocks
    of rows of :math:`\mathbf{a}`; only the row log-sum-exps are kept, and the
    backward pass recomputes each block's softmax :math:`\mathbf{P}` for
    :math:`\partial\mathbf{a} = \mathrm{diag}(w)\mathbf{P}\mathbf{C}`,
    :math:`\partial\mathbf{C} = \mathbf{P}^\top\mathrm{diag}(w)\mathbf{a}`."""

    @staticmethod
    def forward(ctx, a: Tensor, c: Tensor, weight: Tensor, rows: int,
                bound: Optional[float]) -> Tensor:
        c_ext = torch.cat([c, c.new_ones(c.size(0), 1)], dim=1)
        lse = a.new_empty(a.size(0))
        for s in range(0, a.size(0), rows):
            a_s = a[s:s + rows]
            if bound is None:
                top = (a_s @ c.t()).amax(dim=1)
            else:
                top = a_s.new_full((a_s.size(0), ), bound)
            block = _shifted_logits(a_s, c_ext, top).exp_()
            lse[s:s + rows] = block.sum(dim=1).log_().add_(top)
        ctx.rows = rows
        ctx.save_for_backward(a, c_ext, weight, lse)
        return (weight * lse).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        a, c_ext, weight, lse = ctx.saved_tensors
        rows = ctx.rows
        c = c_ext[:, :-1]
        scaled = a * (weight * grad_out).unsqueeze(1)
        grad_a = a.new_empty(a.shape)
        grad_c = c.new_zeros(c.shape)
        for s in range(0, a.size(0), rows):
            p = _shifted_logits(a[s:s + rows], c_ext, lse[s:s + rows]).exp_()
            torch.mm(p, c, out=grad_a[s:s + rows])
            grad_c.addmm_(p.t(), scaled[s:s + rows])
        grad_a.mul_((weight * grad_out).unsqueeze(1))
        return grad_a, grad_c, None, None, None


def row_logsumexp_sum(a: Tensor, c: Tensor, weight: Optional[Tensor] = None,
                      bound: Optional[float] = None, fused: bool = True) -> Tensor:
    r""":math:`\sum_b w_b \log\sum_n \exp(\mathbf{a}_b^\top\mathbf{c}_n)` for
    ``a [B, k]``, ``c [M, k]`` and row weights ``weight [B]`` (default 1),
    differentiable in ``a`` and ``c``.

    ``fused``: over blocks of rows of about :data:`BLOCK_ELEMENTS` logits with a
    hand-written backward pass that recomputes each block (no :math:`[B, M]` matrix
    is stored or allocated at once); each block's logits come shifted out of one
    product. ``bound``: a known upper bound of every logit (e.g. :math:`1/\tau` for
    cosines over :math:`\tau`), used as the shift instead of the row maximum when
    the logits' range :math:`2\,\mathrm{bound}` is small enough to rule out
    underflow. ``False``: :func:`torch.logsumexp` of the whole matrix under
    autograd. Same values.
    """
    if weight is None:
        weight = a.new_ones(a.size(0))
    if not fused:
        return (weight * torch.logsumexp(a @ c.t(), dim=1)).sum()
    if bound is not None and not 2.0 * bound <= _MAX_SHIFT_RANGE:
        bound = None
    rows = max(1, BLOCK_ELEMENTS // max(1, c.size(0)))
    return _RowLogSumExpSum.apply(a, c, weight.detach(), rows, bound)


def hcl_loss(anchors: Tensor, candidates: Tensor, index: Tensor, tau: float,
             factors: Optional[Tuple[Tensor, Tensor]] = None,
             fused: bool = True) -> Tensor:
    r"""LGMRec's ``ssl_triple_loss`` of the rows ``index`` (a batch, repeats
    counted)

    .. math::
        -\sum_{b=1}^{B}\log\frac{\exp(\cos(\mathbf{a}_{k_b}, \mathbf{c}_{k_b})/\tau)}
        {\sum_{n}\exp(\cos(\mathbf{a}_{k_b}, \mathbf{c}_n)/\tau)},

    a sum over the batch with every row of ``candidates`` in every denominator,
    evaluated as :math:`\sum_b [\mathrm{logsumexp}_n(\cdot) - \cos(\cdot)/\tau]` (the
    same value without overflow; :func:`row_logsumexp_sum`).

    Args:
        anchors: ``[M, d]``, the anchor of batch row :math:`b` is row :math:`k_b`.
        candidates: ``[M, d]``, row :math:`k_b` is the positive of batch row
            :math:`b`; every row is a candidate.
        index: ``[B]``, the rows :math:`k_b`.
        tau: temperature > 0.
        factors: ``(H [M, K], Lambda [K, d])`` with ``candidates = H @ Lambda`` (the
            hypergraph embeddings), used when :math:`K < d`: then
            :math:`\mathbf{a}^\top\mathbf{c}_n/\|\mathbf{c}_n\| =
            (\boldsymbol{\Lambda}\mathbf{a})^\top\mathbf{h}_n/\|\mathbf{c}_n\|`
            and the :math:`[B, M]` logits are a product over :math:`K`, not
            :math:`d`, dimensions (same values up to rounding).
        fused: each distinct row of ``index`` once, weighted by its count, with the
            :math:`K`-dimensional logits of ``factors`` and the fused
            :func:`row_logsumexp_sum`; ``False``: the plain computation (every batch
            row, the :math:`d`-dimensional logits, :func:`torch.logsumexp`). Same
            values.
    """
    if not fused:
        a = F.normalize(anchors[index], dim=1) * (1.0 / tau)
        c = F.normalize(candidates, dim=1)
        positive = (a * c[index]).sum()
        return row_logsumexp_sum(a, c, fused=False) - positive
    rows, counts = torch.unique(index, return_counts=True)
    weight = counts.to(candidates.dtype)
    a = normalize_rows(anchors[rows]) * (1.0 / tau)
    if factors is not None and factors[0].size(1) < candidates.size(1):
        h, lam = factors
        # F.normalize's divisor max(||c_n||, eps), applied to the factor rows
        norm = torch.linalg.vector_norm(candidates, dim=1, keepdim=True)
        norm = norm.clamp_min(1e-12)
        positive = (weight * (a * candidates[rows]).sum(dim=1) /
                    norm[rows].squeeze(1)).sum()
        a, c = a @ lam.t(), h / norm
    else:
        c = normalize_rows(candidates)
        positive = (weight * (a * c[rows]).sum(dim=1)).sum()
    return row_logsumexp_sum(a, c, weight, bound=1.0 / tau) - positive
