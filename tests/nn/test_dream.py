"""DREAM: fast path vs convolution path, a plain numpy re-computation, the released
weights on the golden fixture."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mambarec_pyg.nn import DREAM, Projection

ATTENTIONS = ('released', 'paper')
CONV_BIASES_BEFORE_BN = ('branch1.0.bias', 'branch2.0.bias', 'branch3.0.bias',
                         'branch4.0.bias', 'branch5_conv.bias', 'conv_cat.0.bias')


def _randomise(module: DREAM, seed: int) -> DREAM:
    """Non-trivial BatchNorm affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(1.0 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(3)
    return module


def _pair(attention: str, cin=6, cout=5, seed=0):
    torch.manual_seed(seed)
    fast = _randomise(DREAM(cin, cout, attention=attention, se_reduction=4), seed)
    fast = fast.double()
    conv = copy.deepcopy(fast)
    conv.fast_path = False
    return fast, conv


def _run(module, x, grad_out):
    x = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad


@pytest.mark.parametrize('attention', ATTENTIONS)
@pytest.mark.parametrize('training', [True, False])
def test_fast_path_matches_conv_path(attention, training):
    fast, conv = _pair(attention)
    fast.train(training)
    conv.train(training)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(23, 6, dtype=torch.float64, generator=g)
    grad_out = torch.randn(23, 5, dtype=torch.float64, generator=g)
    out_f, gx_f = _run(fast, x, grad_out)
    out_c, gx_c = _run(conv, x, grad_out)
    assert out_f.shape == (23, 5)
    torch.testing.assert_close(out_f, out_c, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx_f, gx_c, rtol=1e-12, atol=1e-13)
    params_c = dict(conv.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None and params_c[name].grad is not None, name
        torch.testing.assert_close(p.grad, params_c[name].grad, rtol=1e-11,
                                   atol=1e-13, msg=name)
    buffers_c = dict(conv.named_buffers())
    for name, b in fast.named_buffers():
        torch.testing.assert_close(b, buffers_c[name], rtol=1e-13, atol=1e-15,
                                   msg=name)
    if training:  # the running statistics did move, in both modules alike
        assert fast.branch3[1].num_batches_tracked.item() == 4
        assert fast.conv_cat[1].num_batches_tracked.item() == 4
        ref = _randomise(DREAM(6, 5, attention=attention).double(), 0)
        assert not torch.allclose(fast.branch5_bn.running_mean,
                                  ref.branch5_bn.running_mean)


def _gate_product_plain(u, weight):
    """max(u c, u s) u with autograd, as the released attention writes it."""
    gates = u @ weight.t()
    s, c = torch.sigmoid(gates[:, :1]), torch.relu(gates[:, 1:])
    return torch.maximum(u * c, u * s) * u


def test_released_gate_product_gradient_matches_autograd_with_ties():
    from mambarec_pyg.nn.dream import _ReleasedGateProduct
    g = torch.Generator().manual_seed(0)
    u = torch.relu(torch.randn(12, 5, dtype=torch.float64, generator=g))
    weight = torch.randn(2, 5, dtype=torch.float64, generator=g)
    # rows 0-1: an exact tie c == s == 0.5 (spatial pre-activation 0, channel 0.5);
    # row 2: channel pre-activation exactly 0 (the ReLU kink)
    weight[0, 0] = weight[0, 1] = 0.0
    weight[1, 0], weight[1, 1] = 0.5, 0.0
    u[:3] = 0.0
    u[0, 0] = u[1, 0] = 1.0
    u[2, 1] = 1.0
    grad_v = torch.randn(12, 5, dtype=torch.float64, generator=g)
    results = []
    for fn in (_ReleasedGateProduct.apply, _gate_product_plain):
        a = u.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        out = fn(a, w)
        out.backward(grad_v)
        results.append((out.detach(), a.grad, w.grad))
    for fast, plain in zip(*results):
        torch.testing.assert_close(fast, plain, rtol=1e-13, atol=1e-15)
    smooth = (torch.relu(torch.randn(7, 4, dtype=torch.float64, generator=g)) + 0.1,
              torch.randn(2, 4, dtype=torch.float64, generator=g))
    assert torch.autograd.gradcheck(_ReleasedGateProduct.apply,
                                    tuple(t.requires_grad_() for t in smooth))


@pytest.mark.parametrize('momentum', [0.3, None])
def test_fast_path_running_statistics_over_several_steps(momentum):
    # momentum=None is BatchNorm's cumulative average (uses num_batches_tracked)
    torch.manual_seed(2)
    fast = DREAM(6, 5, bn_momentum=momentum).double()
    conv = copy.deepcopy(fast)
    conv.fast_path = False
    for step in range(3):
        x = torch.randn(17, 6, dtype=torch.float64) * (step + 1)
        torch.testing.assert_close(fast(x), conv(x), rtol=1e-12, atol=1e-13)
    buffers = dict(conv.named_buffers())
    for name, b in fast.named_buffers():
        torch.testing.assert_close(b, buffers[name], rtol=1e-13, atol=1e-15, msg=name)
    assert fast.branch1[1].num_batches_tracked.item() == 3


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_conv_path_on_feature_maps(attention):
    torch.manual_seed(0)
    module = DREAM(4, 3, attention=attention, se_reduction=3, dilations=(1, 2, 3))
    x = torch.randn(2, 4, 5, 7, requires_grad=True)
    out = module(x)
    assert out.shape == (2, 3, 5, 7)
    assert (out >= 0).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # off-centre taps do meet the input on real maps
    tap = module.branch2[0].weight.grad
    assert tap[:, :, 0, 0].abs().sum() > 0
    module.eval()
    with torch.no_grad():
        assert module(x).shape == (2, 3, 5, 7)


def _relu(z):
    return np.maximum(z, 0.0)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _dream_numpy(x, sd, attention, training, eps=1e-5, momentum=0.1):
    """The DREAM of a 1x1 map, written out: centre taps, batch norm by hand."""
    new_stats = {}

    def bn(z, prefix):
        if training:
            mean, var = z.mean(0), z.var(0)  # biased variance normalises
            n = z.shape[0]
            new_stats[prefix + '.running_mean'] = ((1 - momentum) *
                                                   sd[prefix + '.running_mean'] +
                                                   momentum * mean)
            new_stats[prefix + '.running_var'] = ((1 - momentum) *
                                                  sd[prefix + '.running_var'] +
                                                  momentum * var * n / (n - 1))
        else:
            mean, var = sd[prefix + '.running_mean'], sd[prefix + '.running_var']
        return (z - mean) / np.sqrt(var + eps) * sd[prefix + '.weight'] + \
            sd[prefix + '.bias']

    branches = []
    for conv, norm in (('branch1.0', 'branch1.1'), ('branch2.0', 'branch2.1'),
                       ('branch3.0', 'branch3.1'), ('branch4.0', 'branch4.1'),
                       ('branch5_conv', 'branch5_bn')):
        w = sd[conv + '.weight']
        centre = w[:, :, w.shape[2] // 2, w.shape[3] // 2]
        branches.append(_relu(bn(x @ centre.T + sd[conv + '.bias'], norm)))
    u = np.concatenate(branches, axis=1)
    if attention == 'released':
        s = _sigmoid(u @ sd['fusion.spatial.Conv1x1.weight'].reshape(-1, 1))
        c = _relu(u @ sd['fusion.channel.fc.weight'].reshape(-1, 1))
        fused = np.maximum(u * c, u * s) * u
    else:
        hidden = _relu(u @ sd['fusion.channel.fc1.weight'].T)
        m_c = _sigmoid(hidden @ sd['fusion.channel.fc2.weight'].T)
        m_s = _sigmoid(u.mean(1, keepdims=True) *
                       sd['fusion.spatial.conv.weight'].item() +
                       sd['fusion.spatial.conv.bias'].item())
        fused = np.maximum(u * m_c, u * m_s)
    w = sd['conv_cat.0.weight'][:, :, 0, 0]
    out = _relu(bn(fused @ w.T + sd['conv_cat.0.bias'], 'conv_cat.1'))
    return out, new_stats


@pytest.mark.parametrize('attention', ATTENTIONS)
@pytest.mark.parametrize('training', [True, False])
def test_matches_numpy_recomputation(attention, training):
    torch.manual_seed(3)
    module = _randomise(DREAM(6, 5, attention=attention, se_reduction=4), 3).double()
    module.train(training)
    sd = {k: v.numpy().copy() for k, v in module.state_dict().items()}
    x = np.random.default_rng(4).normal(size=(31, 6))
    expected, new_stats = _dream_numpy(x, sd, attention, training)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)
    assert (expected > 0).any() and (expected == 0).any()  # ReLU active both ways
    for name, value in new_stats.items():
        np.testing.assert_allclose(module.state_dict()[name].numpy(), value,
                                   rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize('attention', ATTENTIONS)
def test_gradients_reach_every_learnable_parameter(attention):
    torch.manual_seed(5)
    module = _randomise(DREAM(6, 5, attention=attention, se_reduction=4), 5).double()
    # A gate that never wins the maximum gets no gradient (that is the function);
    # scale the channel gates so that each gate wins for some entries.
    with torch.no_grad():
        if attention == 'released':
            module.fusion.channel.fc.weight.mul_(20.0)
        else:
            module.fusion.channel.fc1.weight.mul_(5.0)
            module.fusion.channel.fc2.weight.mul_(5.0)
    x = torch.randn(40, 6, dtype=torch.float64)
    for training in (True, False):
        module.train(training)
        module.zero_grad(set_to_none=True)
        (module(x) * torch.randn(40, 5, dtype=torch.float64)).sum().backward()
        for name, p in module.named_parameters():
            assert p.grad is not None, name
            grad = p.grad
            if p.dim() == 4 and p.shape[-1] == 3:
                # On 1x1 maps only the centre tap meets the input: the other taps
                # get exactly zero gradient (on the convolution path too).
                off_centre = grad.clone()
                off_centre[:, :, 1, 1] = 0.0
                assert off_centre.abs().max() == 0.0, name
                grad = grad[:, :, 1, 1]
            is_bias_before_bn = name in CONV_BIASES_BEFORE_BN
            if training and is_bias_before_bn:
                # A bias right before a train-mode BatchNorm is removed by the batch
                # mean: its gradient vanishes (it still moves the running mean).
                assert grad.abs().max() < 1e-12, name
            else:
                assert grad.abs().max() > 0, name


@pytest.mark.parametrize('attention', ATTENTIONS)
@pytest.mark.parametrize('fast_path', [True, False])
def test_zero_rows_give_finite_values(attention, fast_path):
    torch.manual_seed(0)
    module = DREAM(6, 5, attention=attention, se_reduction=4, fast_path=fast_path)
    x = torch.randn(12, 6)
    x[[0, 5]] = 0.0
    for inp in (x, torch.zeros(12, 6)):
        inp = inp.clone().requires_grad_()
        module.zero_grad(set_to_none=True)
        out = module(inp)
        out.sum().backward()
        assert torch.isfinite(out).all()
        assert torch.isfinite(inp.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters())
        assert all(torch.isfinite(b.float()).all() for b in module.buffers())


def test_rejects_wrong_channels_and_rank():
    module = DREAM(6, 5)
    with pytest.raises(ValueError, match=r'expected 6 input channels.*\(7, 5\)'):
        module(torch.zeros(7, 5))
    with pytest.raises(ValueError, match=r'expected 6 input channels'):
        module(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r'\[N, 6\] or feature maps \[N, 6, H, W\]'):
        module(torch.zeros(2, 6, 3))
    with pytest.raises(ValueError, match='attention'):
        DREAM(6, 5, attention='cbam')
    with pytest.raises(ValueError, match='dilations'):
        DREAM(6, 5, dilations=(6, 12))


def test_parameter_names_follow_the_released_layout(released_tiny_dir):
    fixture = released_tiny_dir
    import json
    shapes = json.loads((fixture / 'golden.json').read_text())['weight_shapes']
    released = {k[len('dream_image.'):]: tuple(v) for k, v in shapes.items()
                if k.startswith('dream_image.')}
    own = {k: tuple(v.shape) for k, v in DREAM(64, 64).state_dict().items()}
    assert own == released


def test_reset_parameters_restores_initial_statistics():
    module = _randomise(DREAM(6, 5), 0)
    module(torch.randn(10, 6))
    module.reset_parameters()
    bn = module.branch2[1]
    assert torch.equal(bn.running_mean, torch.zeros(5))
    assert torch.equal(bn.running_var, torch.ones(5))
    assert bn.num_batches_tracked.item() == 0
    assert torch.equal(bn.weight.detach(), torch.ones(5))


def _released(prefix: str, weights) -> dict:
    return {k[len(prefix):]: torch.from_numpy(weights[k]) for k in weights.files
            if k.startswith(prefix)}


@pytest.mark.parametrize('modality,hidden', [('image', 8), ('text', None)])
def test_released_weights_reproduce_golden_dream_output(modality, hidden,
                                                        released_tiny_dir):
    fixture = released_tiny_dir
    weights = np.load(fixture / 'weights.npz')
    outputs = np.load(fixture / 'outputs.npz')
    table = weights[f'{modality}_embedding.weight']
    proj = Projection(table.shape[1], 64, hidden).double()
    proj_sd = {}
    for stage in ('reduce', 'trs'):
        proj_sd.update({f'{stage}.{k}': v for k, v in
                        _released(f'{modality}_{stage}.', weights).items()})
    proj.load_state_dict(proj_sd, strict=True)
    dream = DREAM(64, 64).double()
    dream.load_state_dict(_released(f'dream_{modality}.', weights), strict=True)
    dream.eval()
    expected = outputs[f'eval_dream_{modality}']
    with torch.no_grad():
        features = proj(torch.from_numpy(table))
        for fast_path in (True, False):
            dream.fast_path = fast_path
            got = dream(features).numpy()
            scale = np.abs(expected).max()
            assert np.abs(got - expected).max() <= 1e-10 * scale, fast_path


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('attention', ATTENTIONS)
def test_cuda_matches_cpu(attention):
    cpu, _ = _pair(attention)
    cuda = copy.deepcopy(cpu).cuda()
    x = torch.randn(23, 6, dtype=torch.float64)
    grad_out = torch.randn(23, 5, dtype=torch.float64)
    out_cpu, gx_cpu = _run(cpu, x, grad_out)
    out_gpu, gx_gpu = _run(cuda, x.cuda(), grad_out.cuda())
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx_gpu.cpu(), gx_cpu, rtol=1e-10, atol=1e-12)
    params = dict(cuda.named_parameters())
    for name, p in cpu.named_parameters():
        torch.testing.assert_close(params[name].grad.cpu(), p.grad, rtol=1e-10,
                                   atol=1e-12, msg=name)
    buffers = dict(cuda.named_buffers())
    for name, b in cpu.named_buffers():
        torch.testing.assert_close(buffers[name].cpu(), b, rtol=1e-10, atol=1e-12,
                                   msg=name)
