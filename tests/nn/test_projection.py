"""Projection (dimensionality reduction): composed map vs two stages, numpy, names."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mambarec_pyg.nn import Projection, reduced_width


@pytest.mark.parametrize('bias', [True, False])
def test_fused_matches_two_stages_outputs_and_gradients(bias):
    torch.manual_seed(0)
    fused = Projection(40, 6, hidden_features=9, bias=bias).double()
    staged = copy.deepcopy(fused)
    staged.fused = False
    g = torch.Generator().manual_seed(1)
    x = torch.randn(13, 40, dtype=torch.float64, generator=g)
    grad_out = torch.randn(13, 6, dtype=torch.float64, generator=g)
    results = []
    for module in (fused, staged):
        inp = torch.nn.Parameter(x.clone())  # a trainable feature table
        out = module(inp)
        out.backward(grad_out)
        results.append((out.detach(), inp.grad,
                        {k: p.grad for k, p in module.named_parameters()}))
    (out_f, gx_f, gp_f), (out_s, gx_s, gp_s) = results
    torch.testing.assert_close(out_f, out_s, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx_f, gx_s, rtol=1e-12, atol=1e-13)
    assert set(gp_f) == set(gp_s) == ({'reduce.weight', 'reduce.bias', 'trs.weight',
                                       'trs.bias'} if bias else
                                      {'reduce.weight', 'trs.weight'})
    for name in gp_f:
        assert gp_f[name] is not None and gp_f[name].abs().sum() > 0, name
        torch.testing.assert_close(gp_f[name], gp_s[name], rtol=1e-12, atol=1e-13,
                                   msg=name)


def test_matches_numpy():
    torch.manual_seed(2)
    module = Projection(12, 4, hidden_features=3).double()
    x = np.random.default_rng(0).normal(size=(7, 12))
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    hidden = x @ sd['reduce.weight'].T + sd['reduce.bias']
    expected = hidden @ sd['trs.weight'].T + sd['trs.bias']
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), expected,
                                   rtol=1e-12, atol=1e-13)
        module.fused = False
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), expected,
                                   rtol=1e-12, atol=1e-13)


def test_single_stage_is_one_linear():
    torch.manual_seed(3)
    module = Projection(5, 3)
    assert module.reduce is None
    assert set(module.state_dict()) == {'trs.weight', 'trs.bias'}
    x = torch.randn(4, 5)
    expected = x @ module.trs.weight.t() + module.trs.bias
    torch.testing.assert_close(module(x), expected)
    assert set(Projection(5, 3, bias=False).state_dict()) == {'trs.weight'}


def test_leading_dimensions_are_kept():
    module = Projection(8, 2, hidden_features=4)
    assert module(torch.randn(3, 5, 8)).shape == (3, 5, 2)


def test_released_weights_load_by_name(released_tiny_dir):
    fixture = released_tiny_dir
    weights = np.load(fixture / 'weights.npz')
    image = Projection(64, 64, hidden_features=8).double()
    image.load_state_dict({
        'reduce.weight': torch.from_numpy(weights['image_reduce.weight']),
        'reduce.bias': torch.from_numpy(weights['image_reduce.bias']),
        'trs.weight': torch.from_numpy(weights['image_trs.weight']),
        'trs.bias': torch.from_numpy(weights['image_trs.bias']),
    }, strict=True)
    text = Projection(24, 64).double()
    text.load_state_dict({
        'trs.weight': torch.from_numpy(weights['text_trs.weight']),
        'trs.bias': torch.from_numpy(weights['text_trs.bias']),
    }, strict=True)
    x = weights['image_embedding.weight']
    expected = ((x @ weights['image_reduce.weight'].T + weights['image_reduce.bias'])
                @ weights['image_trs.weight'].T + weights['image_trs.bias'])
    with torch.no_grad():
        np.testing.assert_allclose(image(torch.from_numpy(x)).numpy(), expected,
                                   rtol=1e-12, atol=1e-13)
        text_features = torch.from_numpy(weights['text_embedding.weight'])
        assert text(text_features).shape == (30, 64)


def test_rejects_bad_input():
    module = Projection(8, 2, hidden_features=4)
    with pytest.raises(ValueError, match=r'expected input \[\.\.\., 8\].*\(3, 7\)'):
        module(torch.randn(3, 7))
    with pytest.raises(ValueError, match='hidden_features'):
        Projection(8, 2, hidden_features=0)
    with pytest.raises(ValueError, match='in_features'):
        Projection(0, 2)


def test_reduced_width():
    assert reduced_width((4096, 384), 8) == 48  # the paper's d' at r = 8
    assert reduced_width([384, 4096], 4) == 96
    assert reduced_width(4096, 8) == 512  # released visual hidden width
    assert reduced_width((24, 64), 8) == 3
    assert reduced_width((25, ), 8) == 3  # floor
    with pytest.raises(ValueError, match='leaves no dimension'):
        reduced_width((7, 100), 8)
    with pytest.raises(ValueError, match='reduction factor'):
        reduced_width((64, ), 0)
    with pytest.raises(ValueError, match='feature widths'):
        reduced_width((), 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_fused_on_cuda_matches_two_stages():
    torch.manual_seed(0)
    fused = Projection(40, 6, hidden_features=9).double().cuda()
    staged = copy.deepcopy(fused)
    staged.fused = False
    x = torch.randn(13, 40, dtype=torch.float64, device='cuda')
    torch.testing.assert_close(fused(x), staged(x), rtol=1e-12, atol=1e-13)
