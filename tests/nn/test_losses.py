"""BPR, InfoNCE and MMD against plain computations (numpy loops, plain autograd)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mambarec_pyg.nn import InfoNCELoss, MMDLoss, bpr_loss, info_nce, mmd_loss


def _rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------
# BPR
# ---------------------------------------------------------------------------------
def test_bpr_matches_numpy():
    rng = _rng(1)
    pos, neg = rng.normal(size=17), rng.normal(size=17)
    expected = np.mean([-math.log(1.0 / (1.0 + math.exp(-(p - n))))
                        for p, n in zip(pos, neg)])
    got = bpr_loss(torch.from_numpy(pos), torch.from_numpy(neg))
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-13
    terms = bpr_loss(torch.from_numpy(pos), torch.from_numpy(neg), reduction='none')
    np.testing.assert_allclose(terms.numpy(), [-math.log(1.0 / (1.0 + math.exp(n - p)))
                                               for p, n in zip(pos, neg)], rtol=1e-13)
    with pytest.raises(ValueError, match='reduction'):
        bpr_loss(torch.from_numpy(pos), torch.from_numpy(neg), reduction='sum')


def test_bpr_is_stable_for_large_differences():
    pos = torch.tensor([1000.0, -1000.0, 0.0])
    neg = torch.tensor([-1000.0, 1000.0, 0.0])
    got = bpr_loss(pos, neg)
    # -log sigmoid(2000) ~ 0, -log sigmoid(-2000) = 2000, -log sigmoid(0) = log 2
    assert torch.isfinite(got)
    assert abs(got.item() - (0.0 + 2000.0 + math.log(2.0)) / 3) < 1e-3


def test_bpr_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='same shape'):
        bpr_loss(torch.zeros(3), torch.zeros(4))


# ---------------------------------------------------------------------------------
# InfoNCE
# ---------------------------------------------------------------------------------
def _info_nce_numpy(a, b, t):
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    total = 0.0
    for i in range(len(a)):
        num = math.exp(float(a[i] @ b[i]) / t)
        den = sum(math.exp(float(a[i] @ b[j]) / t) for j in range(len(b)))
        total += -math.log(num / den)
    return total / len(a)


@pytest.mark.parametrize('n,d,t', [(1, 3, 0.2), (6, 4, 0.2), (11, 8, 0.5), (9, 2, 1.0)])
def test_info_nce_matches_numpy_loop(n, d, t):
    rng = _rng(n)
    a, b = rng.normal(size=(n, d)) * 3.0, rng.normal(size=(n, d))
    got = info_nce(torch.from_numpy(a), torch.from_numpy(b), t).item()
    assert abs(got - _info_nce_numpy(a, b, t)) < 1e-12 * max(1.0, abs(got))


def test_info_nce_equals_released_formula_float64():
    # The released expression: -log(exp(pos / t) / sum_j exp(sim_ij / t)), mean.
    g = torch.Generator().manual_seed(3)
    a = torch.randn(64, 16, dtype=torch.float64, generator=g)
    b = torch.randn(64, 16, dtype=torch.float64, generator=g)
    t = 0.2
    an = torch.nn.functional.normalize(a, dim=1)
    bn = torch.nn.functional.normalize(b, dim=1)
    pos = torch.exp((an * bn).sum(1) / t)
    ttl = torch.exp(an @ bn.t() / t).sum(1)
    released = -torch.log(pos / ttl).mean()
    assert abs(info_nce(a, b, t).item() - released.item()) < 1e-12


@pytest.mark.parametrize('n', [1, 5, 64])
def test_info_nce_matches_cross_entropy_with_autograd(n):
    # the hand-written logit gradient vs autograd through F.cross_entropy
    g = torch.Generator().manual_seed(n)
    a = torch.randn(n, 8, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(n, 8, dtype=torch.float64, generator=g, requires_grad=True)
    t = 0.2
    fast = info_nce(a, b, t)
    fa, fb = torch.autograd.grad(2.5 * fast, (a, b))
    logits = (torch.nn.functional.normalize(a, dim=1) @
              torch.nn.functional.normalize(b, dim=1).t()) / t
    plain = torch.nn.functional.cross_entropy(logits, torch.arange(n))
    pa, pb = torch.autograd.grad(2.5 * plain, (a, b))
    assert abs(fast.item() - plain.item()) < 1e-13
    torch.testing.assert_close(fa, pa, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fb, pb, rtol=1e-12, atol=1e-14)


def test_info_nce_zero_rows_are_finite():
    a = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(5, 4, dtype=torch.float64)
    a[1] = 0.0
    b[3] = 0.0
    a.requires_grad_()
    b.requires_grad_()
    loss = info_nce(a, b, 0.2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()
    expected = _info_nce_numpy(a.detach().numpy(), b.detach().numpy(), 0.2)
    assert abs(loss.item() - expected) < 1e-12


def test_info_nce_gradcheck():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.3), (a, b))


def test_info_nce_rejects_bad_input():
    with pytest.raises(ValueError, match='same shape'):
        info_nce(torch.zeros(3, 2), torch.zeros(4, 2), 0.2)
    with pytest.raises(ValueError, match='temperature'):
        info_nce(torch.zeros(3, 2), torch.zeros(3, 2), 0.0)


def test_info_nce_module_wraps_function():
    a, b = torch.randn(7, 5), torch.randn(7, 5)
    module = InfoNCELoss(0.4)
    assert module(a, b).item() == info_nce(a, b, 0.4).item()
    assert 'temperature=0.4' in repr(module)


# ---------------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------------
def _mmd_numpy(x, y, bandwidths):
    def k(a, b):
        return sum(math.exp(-float(np.sum((a - b) ** 2)) / (2 * s * s))
                   for s in bandwidths)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n)) / (n * n)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def _mmd_plain(x, y, bandwidths):
    """Plain autograd: pairwise differences, one kernel per bandwidth."""

    def k(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return sum(torch.exp(-sq / (2 * s * s)) for s in bandwidths)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


CASES = [
    # n, m, d, bandwidth(s), chunk_size
    (1, 1, 3, 1.5, 1024),
    (4, 7, 3, 1.5, 1024),
    (9, 3, 5, (0.5, 1.0, 2.0), 1024),
    (16, 16, 4, 1.0, 5),
    (13, 6, 2, (1.0, 1.5), 4),
    (5, 11, 6, 0.3, 1),
]


@pytest.mark.parametrize('n,m,d,bw,chunk', CASES)
def test_mmd_matches_numpy_double_loop(n, m, d, bw, chunk):
    rng = _rng(n * 100 + m)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 0.7 + 0.4
    bws = (bw, ) if isinstance(bw, float) else bw
    expected = _mmd_numpy(x, y, bws)
    got = mmd_loss(torch.from_numpy(x), torch.from_numpy(y), bw, chunk_size=chunk)
    assert abs(got.item() - expected) < 1e-12 * max(1.0, abs(expected))
    # without gradients (no products kept) the value is the same
    with torch.no_grad():
        again = mmd_loss(torch.from_numpy(x), torch.from_numpy(y), bw, chunk_size=chunk)
    assert abs(again.item() - expected) < 1e-12 * max(1.0, abs(expected))


@pytest.mark.parametrize('n,m,d,bw,chunk', CASES)
def test_mmd_fast_path_matches_plain_autograd(n, m, d, bw, chunk):
    g = torch.Generator().manual_seed(n + 7 * m)
    x = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    y = (torch.randn(m, d, dtype=torch.float64, generator=g) + 0.3).requires_grad_()
    bws = (bw, ) if isinstance(bw, float) else bw
    fast = mmd_loss(x, y, bw, chunk_size=chunk)
    gx, gy = torch.autograd.grad(3.0 * fast, (x, y))
    plain = _mmd_plain(x, y, bws)
    px, py = torch.autograd.grad(3.0 * plain, (x, y))
    assert abs(fast.item() - plain.item()) < 1e-13
    torch.testing.assert_close(gx, px, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gy, py, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize('bw', [1.5, (0.7, 2.0)])
def test_mmd_gradcheck(bw):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mmd_loss(a, b, bw, chunk_size=4),
                                    (x, y))


def test_mmd_gradient_of_one_side_only():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64)
    (gx, ) = torch.autograd.grad(mmd_loss(x, y, 1.5), (x, ))
    (px, ) = torch.autograd.grad(_mmd_plain(x, y, (1.5, )), (x, ))
    torch.testing.assert_close(gx, px, rtol=1e-12, atol=1e-14)


def test_mmd_of_identical_samples_is_zero_and_zero_rows_are_finite():
    x = torch.randn(8, 4, dtype=torch.float64)
    assert abs(mmd_loss(x, x.clone(), 1.5).item()) < 1e-14
    x[2] = 0.0
    y = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    x.requires_grad_()
    loss = mmd_loss(x, y, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert torch.isfinite(y.grad).all()


def test_mmd_float32_close_to_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(200, 16, generator=g) + 0.5, dim=1)
    lo = mmd_loss(x, y, 1.5, chunk_size=128)
    hi = mmd_loss(x.double(), y.double(), 1.5)
    assert lo.dtype == torch.float32
    assert abs(lo.item() - hi.item()) < 1e-5


def test_mmd_keeps_no_quadratic_tensor_for_backward():
    """At B = 2048, d = 64 the graph must save nothing with B * B elements (a
    [B, B, d] implementation saves several such tensors, a [B, B] one at least one)."""
    B, d = 2048, 64

    def saved_sizes(fn, *inputs):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*inputs)
        return out, sizes

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(B, d, generator=g), dim=1)
    x.requires_grad_()
    y.requires_grad_()
    out, sizes = saved_sizes(lambda a, b: mmd_loss(a, b, 1.5), x, y)
    assert sizes, 'the hook recorded nothing: the check would be vacuous'
    assert max(sizes) < B * B, f'a saved tensor has {max(sizes)} elements'
    assert sum(sizes) <= 8 * B * (d + 1)
    out.backward()
    assert torch.isfinite(x.grad).all()

    # The same hook does catch a quadratic implementation (small B to stay cheap).
    b = 64
    _, naive = saved_sizes(lambda a, c: _mmd_plain(a, c, (1.5, )), x[:b], y[:b])
    assert max(naive) >= b * b * d


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError, match='same d'):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match='at least one row'):
        mmd_loss(torch.zeros(0, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match='bandwidth'):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 2), bandwidth=0.0)
    with pytest.raises(ValueError, match='bandwidth'):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 2), bandwidth=())
    with pytest.raises(ValueError, match='chunk_size'):
        mmd_loss(torch.zeros(3, 2), torch.zeros(3, 2), chunk_size=0)


def test_mmd_module_wraps_function():
    x, y = torch.randn(7, 5), torch.randn(4, 5)
    assert MMDLoss(1.5)(x, y).item() == mmd_loss(x, y, 1.5).item()
    module = MMDLoss([1.0, 2.0])
    assert module.bandwidth == (1.0, 2.0)
    assert module(x, y).item() == mmd_loss(x, y, (1.0, 2.0)).item()
    with pytest.raises(ValueError, match='bandwidth'):
        MMDLoss(-1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('bw', [1.5, (0.5, 1.0, 2.0)])
def test_losses_on_cuda_match_cpu(bw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, dtype=torch.float64, generator=g)
    y = torch.randn(200, 16, dtype=torch.float64, generator=g) + 0.2
    results = []
    for device in ('cpu', 'cuda'):
        # fresh leaves on each device (x.to('cpu') would return x itself)
        a = x.detach().clone().to(device).requires_grad_()
        b = y.detach().clone().to(device).requires_grad_()
        value = mmd_loss(a, b, bw, chunk_size=128) + info_nce(a[:200], b, 0.2)
        value.backward()
        results.append((value.item(), a.grad.cpu(), b.grad.cpu()))
    (v0, ga0, gb0), (v1, ga1, gb1) = results
    assert abs(v0 - v1) < 1e-10
    torch.testing.assert_close(ga1, ga0, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gb1, gb0, rtol=1e-9, atol=1e-12)
