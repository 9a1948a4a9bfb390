r"""Training objectives of MambaRec (`"MambaRec: Multimodal Recommendation with
Local and Global Alignment" <https://doi.org/10.1145/3746252>`_, CIKM 2025).

Pure functions in the style of :mod:`torch.nn.functional` plus thin modules that hold
their hyper-parameters:

* :func:`bpr_loss` -- Bayesian personalised ranking,
* :func:`info_nce` / :class:`InfoNCELoss` -- InfoNCE with in-batch negatives (eq. 10),
* :func:`mmd_loss` / :class:`MMDLoss` -- squared maximum mean discrepancy with a
  Gaussian kernel (eqs. 7-9);
* :func:`emb_loss` -- MMRec's ``EmbLoss`` regulariser of the baselines (Frobenius
  norms, not squared, over the batch length);
* :func:`stacked_square_mean` -- MMGCN's and GRCN's ID regulariser.

The batch terms take the :class:`~mambarec_pyg.data.sampling.BPRBatch` (``batch``) so
that on one process's slice of a global batch (data parallelism) they give the
value the rule of :class:`~mambarec_pyg.models.Recommender` asks for.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ..data.sampling import BPRBatch

Bandwidth = Union[float, Sequence[float]]

__all__ = ['bpr_loss', 'info_nce', 'mmd_loss', 'emb_loss', 'stacked_square_mean',
           'InfoNCELoss', 'MMDLoss']


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor,
             batch: Optional['BPRBatch'] = None, reduction: str = 'mean') -> Tensor:
    r"""The Bayesian personalised ranking loss

    .. math::
        \mathcal{L}_{\mathrm{BPR}} = \frac{1}{B} \sum_{b=1}^{B}
        -\log \sigma(y_{u_b i_b} - y_{u_b j_b}),

    computed as :math:`\mathrm{softplus}(y_{uj} - y_{ui})`, which equals
    :math:`-\log\sigma(y_{ui} - y_{uj})` without overflowing for large differences.

    Args:
        pos_scores (torch.Tensor): scores of the positive pairs, shape :obj:`[B]`.
        neg_scores (torch.Tensor): scores of the negative pairs, shape :obj:`[B]`.
        batch (BPRBatch, optional): the batch the scores belong to; the mean is then
            :meth:`BPRBatch.mean <mambarec_pyg.data.sampling.BPRBatch.mean>`, over
            the global batch when the batch is one process's slice of it (the plain
            mean otherwise).
        reduction (str): ``'mean'`` (the loss above) or ``'none'`` (the :obj:`[B]`
            terms, e.g. for a weighted mean; ``batch`` is then not used).
            (default: ``'mean'``)
    """
    if pos_scores.shape != neg_scores.shape:
        raise ValueError(f'bpr_loss: expected pos_scores and neg_scores of the same '
                         f'shape, got {tuple(pos_scores.shape)} and '
                         f'{tuple(neg_scores.shape)}')
    if reduction not in ('mean', 'none'):
        raise ValueError(f"bpr_loss: reduction: expected 'mean' or 'none', got "
                         f"{reduction!r}")
    terms = F.softplus(neg_scores - pos_scores)
    if reduction == 'none':
        return terms
    return terms.mean() if batch is None else batch.mean(terms)


def emb_loss(*embeddings: Tensor, batch: Optional['BPRBatch'] = None) -> Tensor:
    r"""MMRec's ``EmbLoss``: the sum of the Frobenius norms (**not** squared) of the
    given batch embeddings, divided by the number of rows of the last one,

    .. math::
        \frac{1}{B} \sum_k \|\mathbf{E}_k\|_F,

    the regulariser of MMRec's BPR, LightGCN, VBPR and LGMRec (``reg_weight`` times
    this), and of BM3 on the full tables.

    ``batch``: the :class:`~mambarec_pyg.data.sampling.BPRBatch` whose rows the
    embeddings are (each ``[b, d_k]``). When it is one process's slice of a global
    batch, a norm is not a sum over the rows: each process gathers the row norms of
    every process (:meth:`BPRBatch.gather
    <mambarec_pyg.data.sampling.BPRBatch.gather>`, one ``[b, K]`` gather) and
    computes the global value, :math:`\|\mathbf{E}_k\|_F = \|(\|\mathbf{e}_{k,b}
    \|)_b\|_2` over the :math:`B` = ``batch.num_global`` rows. Without a shard
    (one process) the plain computation above.
    """
    if not embeddings:
        raise ValueError('emb_loss: expected at least one tensor')
    if batch is not None and batch.shard is not None:
        rows = torch.stack([torch.linalg.vector_norm(e, dim=1) for e in embeddings],
                           dim=1)
        norms = torch.linalg.vector_norm(batch.gather(rows), dim=0)
        return norms.sum() / max(batch.num_global, 1)
    total = embeddings[0].norm(p=2)
    for e in embeddings[1:]:
        total = total + e.norm(p=2)
    return total / embeddings[-1].size(0)


def stacked_square_mean(users: Tensor, pos: Tensor, neg: Tensor,
                        batch: Optional['BPRBatch'] = None) -> Tensor:
    r"""The mean of the squares over the :math:`2B \times d` stacked batch
    :math:`[\mathbf{E}_u; \mathbf{E}_u]` and :math:`[\mathbf{E}_{i^+};
    \mathbf{E}_{i^-}]` (each user once per pair),

    .. math::
        \frac{1}{2Bd}\sum_b \big(2\|\mathbf{e}_{u_b}\|^2 +
        \|\mathbf{e}_{i^+_b}\|^2 + \|\mathbf{e}_{i^-_b}\|^2\big),

    the ID regulariser of MMRec's MMGCN and GRCN.

    Args:
        users, pos, neg (torch.Tensor): the batch's rows, each :obj:`[B, d]`.
        batch (BPRBatch, optional): when it is one process's slice of a global
            batch, the per-triple terms are averaged with :meth:`BPRBatch.mean
            <mambarec_pyg.data.sampling.BPRBatch.mean>` (the global mean).
    """
    if batch is None or batch.shard is None:
        return (2 * users.square().sum() + pos.square().sum() +
                neg.square().sum()) / (2 * users.size(0) * users.size(1))
    per_triple = (2 * users.square().sum(1) + pos.square().sum(1) +
                  neg.square().sum(1)) / (2 * users.size(1))
    return batch.mean(per_triple)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    r"""InfoNCE with in-batch negatives (the paper's eq. 10)

    .. math::
        \mathcal{L}_{\mathrm{InfoNCE}} = -\frac{1}{B} \sum_{i=1}^{B} \log
        \frac{\exp(\mathrm{sim}(a_i, b_i) / \tau)}
             {\sum_{j=1}^{B} \exp(\mathrm{sim}(a_i, b_j) / \tau)},

    where :math:`\mathrm{sim}` is the dot product of L2-normalised rows (normalised
    here, with the :func:`torch.nn.functional.normalize` epsilon, so all-zero rows give
    finite values) and every row of :obj:`b` is a candidate for every row of
    :obj:`a`. It is evaluated as a cross-entropy over the :math:`B \times B` logit
    matrix :math:`L` (a log-softmax per row), which is the released
    :math:`-\log(\exp(\cdot)/\sum\exp(\cdot))` without its overflow. The logit
    part has a hand-written gradient, :math:`\partial/\partial L =
    (\mathrm{softmax}(L) - I) / B`, formed in one buffer: it is
    :func:`torch.nn.functional.cross_entropy`'s, without the one-hot target matrix
    and the extra log-softmax backward pass over the :math:`B \times B` matrix.

    Args:
        a (torch.Tensor): anchors, shape :obj:`[B, d]`.
        b (torch.Tensor): positives (row :math:`i` pairs with row :math:`i` of
            :obj:`a`), shape :obj:`[B, d]`.
        temperature (float): the temperature :math:`\tau > 0`.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f'info_nce: expected two matrices of the same shape [B, d], '
                         f'got {tuple(a.shape)} and {tuple(b.shape)}')
    if not temperature > 0:
        raise ValueError(f'info_nce: expected temperature > 0, got {temperature!r}')
    # Dividing the (small) normalised anchors by tau saves a pass over the B x B logits.
    a = F.normalize(a, dim=1) * (1.0 / temperature)
    b = F.normalize(b, dim=1)
    return _InfoNCE.apply(a, b)


class _InfoNCE(torch.autograd.Function):
    r"""Cross-entropy of the logits :math:`L = a b^\top` against the diagonal,
    :math:`-\frac{1}{B}\sum_i \log\mathrm{softmax}(L)_{ii}`, with the gradient
    :math:`G = (\mathrm{softmax}(L) - I) / B`, :math:`\partial a = G b`,
    :math:`\partial b = G^\top a`."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        log_p = torch.log_softmax(a @ b.t(), dim=1)
        ctx.save_for_backward(a, b, log_p)
        return -log_p.diagonal().sum() / a.size(0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        a, b, log_p = ctx.saved_tensors
        grad = torch.exp(log_p)  # softmax, in a fresh buffer
        grad.diagonal().sub_(1.0)
        scale = grad_out / a.size(0)
        grad_a = (grad @ b).mul_(scale) if ctx.needs_input_grad[0] else None
        grad_b = (grad.t() @ a).mul_(scale) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def _bandwidths(bandwidth: Bandwidth) -> Tuple[float, ...]:
    if isinstance(bandwidth, (int, float)):
        values = (float(bandwidth), )
    else:
        values = tuple(float(s) for s in bandwidth)
    if len(values) == 0 or not all(s > 0 and math.isfinite(s) for s in values):
        raise ValueError(f'mmd_loss: expected a bandwidth > 0 or a non-empty sequence '
                         f'of them, got {bandwidth!r}')
    return values


def _kernel_block(
    a: Tensor,
    a_sq: Tensor,
    b: Tensor,
    b_sq: Tensor,
    gammas: Sequence[float],
    rhs_b: Optional[Tensor],
    rhs_a: Optional[Tensor],
    buffers: Sequence[Tensor],
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    r"""Sum of the Gaussian kernels between the rows of :obj:`a` and :obj:`b`.

    With :math:`Q = \sum_s K_s / \sigma_s^2` (:math:`K_s` the :obj:`[len(a), len(b)]`
    kernel block of bandwidth :math:`\sigma_s`), returns the total
    :math:`\sum_{ij} \sum_s (K_s)_{ij}`, :math:`Q\,\mathrm{rhs\_b}` (when
    :obj:`rhs_b`, :obj:`[len(b), k]`, is given) and :math:`Q^\top \mathrm{rhs\_a}`
    (when :obj:`rhs_a`, :obj:`[len(a), k]`, is given). The right-hand sides carry a
    last column of ones, whose product gives the row (column) sums of the block.

    Squared distances come from :math:`|a|^2 + |b|^2 - 2 a^\top b` (clamped at 0)
    and are overwritten in place. :obj:`buffers` are flat scratch tensors of at
    least :obj:`len(a) * len(b)` elements (one for a single bandwidth, three for
    several), reused across blocks: a fresh large allocation costs page faults on
    every call, and the blocks are the only :math:`O(B^2)` memory used.
    """
    shape = (a.size(0), b.size(0))
    numel = shape[0] * shape[1]
    dist = buffers[0][:numel].view(shape)
    torch.addmm(b_sq.unsqueeze(0), a, b.t(), beta=1.0, alpha=-2.0, out=dist)
    dist.add_(a_sq.unsqueeze(1)).clamp_(min=0.0)
    if len(gammas) == 1:
        # One bandwidth: Q = K / sigma^2, and the ones column gives the total.
        gamma = gammas[0]
        q = dist.mul_(-gamma).exp_()
        scale = 2.0 * gamma  # 1 / sigma^2
        total = q.sum() if rhs_a is None and rhs_b is None else None
    else:
        # Several: accumulate Q in its own buffer (one product instead of one per
        # bandwidth); the total needs a reduction per kernel.
        q = buffers[1][:numel].view(shape)
        kern = buffers[2][:numel].view(shape)
        total = dist.new_zeros(())
        for s, gamma in enumerate(gammas):
            torch.mul(dist, -gamma, out=kern).exp_()
            total = total + kern.sum()
            if s == 0:
                torch.mul(kern, 2.0 * gamma, out=q)
            else:
                q.add_(kern, alpha=2.0 * gamma)
        scale = 1.0
    prod_b = prod_a = None
    if rhs_b is not None:
        prod_b = q @ rhs_b
        if total is None:
            total = prod_b[:, -1].sum()
        if scale != 1.0:
            prod_b.mul_(scale)
    if rhs_a is not None:
        prod_a = q.t() @ rhs_a
        if total is None:
            total = prod_a[:, -1].sum()
        if scale != 1.0:
            prod_a.mul_(scale)
    return total, prod_b, prod_a


class _MMD(torch.autograd.Function):
    r"""Biased squared MMD with a closed-form gradient.

    With :math:`z = [x; y]` and weights :math:`w = [1/n, \dots, 1/n, -1/m, \dots]`,
    :math:`\mathrm{MMD}^2 = \sum_{ij} w_i w_j k(z_i, z_j)` and

    .. math::
        \frac{\partial\, \mathrm{MMD}^2}{\partial z_i} = -2 w_i \sum_s
        \frac{1}{\sigma_s^2} \sum_j w_j k_s(z_i, z_j) (z_i - z_j)
        = -2 w_i \big(z_i (Qw)_i - (Q\,(w \odot z))_i\big),

    with :math:`Q = \sum_s K_s / \sigma_s^2`. The forward pass computes the three
    kernel blocks (x-x, x-y, y-y) chunk by chunk, accumulates the value and the
    :obj:`[n + m, d + 1]` products :math:`Q\,[w \odot z, w]` the gradient needs,
    and keeps nothing of size :math:`B^2` for the backward pass. Written by hand
    because autograd through the kernel keeps every :math:`B \times B` intermediate
    (several times the memory and element-wise passes).
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, gammas: Tuple[float, ...],
                chunk_size: int) -> Tensor:
        n, m = x.size(0), y.size(0)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        x_sq = (x * x).sum(1)
        y_sq = (y * y).sum(1)
        x1 = y1 = px = py = None
        if need_grad:
            x1 = torch.cat([x, x.new_ones(n, 1)], dim=1)
            y1 = torch.cat([y, y.new_ones(m, 1)], dim=1)
            # px[i] = sum_j Q_ij w_j [z_j, 1] over the x rows (likewise py for y).
            px = x.new_zeros(n, x.size(1) + 1)
            py = y.new_zeros(m, y.size(1) + 1)
        sum_xx = sum_yy = sum_xy = x.new_zeros(())
        size = min(chunk_size, max(n, m)) * max(n, m)
        buffers = [x.new_empty(size) for _ in range(1 if len(gammas) == 1 else 3)]
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            xc, xc_sq = x[start:stop], x_sq[start:stop]
            total, prod, _ = _kernel_block(xc, xc_sq, x, x_sq, gammas, x1, None,
                                           buffers)
            sum_xx = sum_xx + total
            if need_grad:
                px[start:stop].add_(prod, alpha=1.0 / n)
            # The x-y block serves both sides: its rows for x, its columns for y.
            total, prod, prod_t = _kernel_block(
                xc, xc_sq, y, y_sq, gammas, y1,
                x1[start:stop] if need_grad else None, buffers)
            sum_xy = sum_xy + total
            if need_grad:
                px[start:stop].sub_(prod, alpha=1.0 / m)
                py.add_(prod_t, alpha=1.0 / n)
        for start in range(0, m, chunk_size):
            stop = min(start + chunk_size, m)
            total, prod, _ = _kernel_block(y[start:stop], y_sq[start:stop], y, y_sq,
                                           gammas, y1, None, buffers)
            sum_yy = sum_yy + total
            if need_grad:
                py[start:stop].sub_(prod, alpha=1.0 / m)
        value = sum_xx / (n * n) + sum_yy / (m * m) - 2.0 * sum_xy / (n * m)
        if need_grad:
            ctx.save_for_backward(x, y, px, py)
            ctx.sizes = (n, m)
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, y, px, py = ctx.saved_tensors
        n, m = ctx.sizes
        d = x.size(1)
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            # -2 w_i (z_i (Qw)_i - (Q(w z))_i) with w_i = 1/n
            grad_x = torch.addcmul(px[:, :d], x, px[:, d:], value=-1.0)
            grad_x.mul_(grad_out * (2.0 / n))
        if ctx.needs_input_grad[1]:
            # ... with w_i = -1/m
            grad_y = torch.addcmul(py[:, :d], y, py[:, d:], value=-1.0)
            grad_y.mul_(grad_out * (-2.0 / m))
        return grad_x, grad_y, None, None


def mmd_loss(x: Tensor, y: Tensor, bandwidth: Bandwidth = 1.5,
             chunk_size: int = 1024) -> Tensor:
    r"""Squared maximum mean discrepancy with a Gaussian kernel (the paper's eq. 8-9)

    .. math::
        \mathrm{MMD}^2(X, Y) = \frac{1}{n^2}\sum_{i,i'} k(x_i, x_{i'})
        + \frac{1}{m^2}\sum_{j,j'} k(y_j, y_{j'})
        - \frac{2}{nm}\sum_{i,j} k(x_i, y_j),
        \qquad k(a, b) = \sum_s \exp\!\Big(-\frac{\|a - b\|^2}{2\sigma_s^2}\Big),

    the biased estimate (diagonals included), as in the released implementation.
    Several bandwidths give the sum of their kernels.

    The rows are used as given: they are **not** L2-normalised here (MambaRec
    normalises the DREAM outputs before calling). Squared distances are computed as
    :math:`\|a\|^2 + \|b\|^2 - 2 a^\top b` (clamped at 0) from one matrix product, and
    no :obj:`[n, m, d]` difference tensor is ever built: the value and a closed-form
    gradient are accumulated over row chunks of at most :obj:`chunk_size` rows, so
    the extra memory is a few :obj:`[chunk_size, max(n, m)]` blocks in the forward
    pass and :obj:`O((n + m) d)` kept for the backward pass. Only first derivatives
    are available.

    Args:
        x (torch.Tensor): samples of the first distribution, :obj:`[n, d]`.
        y (torch.Tensor): samples of the second distribution, :obj:`[m, d]`
            (:obj:`m` may differ from :obj:`n`).
        bandwidth (float or sequence of float): the kernel bandwidth
            :math:`\sigma` (or several). (default: :obj:`1.5`)
        chunk_size (int): rows per kernel block. (default: :obj:`1024`)
    """
    if x.dim() != 2 or y.dim() != 2 or x.size(1) != y.size(1):
        raise ValueError(f'mmd_loss: expected x [n, d] and y [m, d] with the same d, '
                         f'got {tuple(x.shape)} and {tuple(y.shape)}')
    if x.size(0) == 0 or y.size(0) == 0:
        raise ValueError(f'mmd_loss: expected at least one row in x and in y, got '
                         f'{x.size(0)} and {y.size(0)}')
    if chunk_size < 1:
        raise ValueError(f'mmd_loss: expected chunk_size >= 1, got {chunk_size!r}')
    gammas = tuple(1.0 / (2.0 * s * s) for s in _bandwidths(bandwidth))
    dtype = torch.promote_types(x.dtype, y.dtype)
    return _MMD.apply(x.to(dtype).contiguous(), y.to(dtype).contiguous(), gammas,
                      int(chunk_size))


class InfoNCELoss(torch.nn.Module):
    r"""Module form of :func:`info_nce`.

    Args:
        temperature (float): the temperature :math:`\tau`. (default: :obj:`0.2`)
    """

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f'InfoNCELoss: expected temperature > 0, got '
                             f'{temperature!r}')
        self.temperature = float(temperature)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return info_nce(a, b, self.temperature)

    def extra_repr(self) -> str:
        return f'temperature={self.temperature}'


class MMDLoss(torch.nn.Module):
    r"""Module form of :func:`mmd_loss`.

    Args:
        bandwidth (float or sequence of float): Gaussian kernel bandwidth(s)
            :math:`\sigma`. (default: :obj:`1.5`)
    """

    def __init__(self, bandwidth: Bandwidth = 1.5):
        super().__init__()
        values = _bandwidths(bandwidth)
        self.bandwidth: Union[float, Tuple[float, ...]] = (values[0] if len(values) == 1
                                                           else values)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return mmd_loss(x, y, self.bandwidth)

    def extra_repr(self) -> str:
        return f'bandwidth={self.bandwidth}'
