r"""The Dilated REfinement Attention Module (DREAM) of MambaRec."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import BatchNorm2d, Conv2d, Linear, ReLU, Sequential
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['DREAM']

ATTENTIONS = ('released', 'paper')


class DREAM(torch.nn.Module):
    r"""The Dilated REfinement Attention Module from the `"MambaRec: Multimodal
    Recommendation with Local and Global Alignment"
    <https://doi.org/10.1145/3746252>`_ paper (CIKM 2025, Section 4.1): an ASPP-style
    multi-scale block followed by channel and spatial attention.

    Five branches, each :math:`C_{in} \to C` channels followed by BatchNorm and ReLU,
    are concatenated (eq. 1):

    .. math::
        \mathbf{U} = \big[\, f_{1\times1}(\mathbf{X}) \,\|\,
        f^{(6)}_{3\times3}(\mathbf{X}) \,\|\, f^{(12)}_{3\times3}(\mathbf{X}) \,\|\,
        f^{(18)}_{3\times3}(\mathbf{X}) \,\|\,
        \mathrm{up}(f_{1\times1}(\mathrm{GAP}(\mathbf{X}))) \,\big]
        \in \mathbb{R}^{5C \times H \times W},

    with :math:`f^{(r)}_{3\times3}` a 3x3 convolution of dilation (and padding)
    :math:`r` and :math:`\mathrm{up}` bilinear upsampling (``align_corners=True``).
    Two attention variants follow.

    * ``attention='released'`` -- what the authors' released implementation computes
      (the published numbers; docs/reference.md §4):

      .. math::
          \mathbf{s} &= \sigma(\mathbf{w}_s^\top \mathbf{U}), \qquad
          c = \mathrm{ReLU}(\mathbf{w}_c^\top \mathrm{GAP}(\mathbf{U})), \\
          \mathbf{M} &= \max(c\, \mathbf{U},\ \mathbf{s} \odot \mathbf{U}), \qquad
          \mathbf{Y} = \mathrm{ReLU}(\mathrm{BN}(W_o (\mathbf{M} \odot \mathbf{U}) +
          \mathbf{b}_o)),

      a spatial gate from a 1x1 convolution over all :math:`5C` channels, a
      "channel" gate that is one scalar per sample, and an extra product with
      :math:`\mathbf{U}` before the output 1x1 convolution (:obj:`conv_cat`).

    * ``attention='paper'`` -- the paper's text (eqs. 2-6): squeeze-excitation channel
      attention :math:`\mathbf{m}_c = \sigma(W_2\, \mathrm{ReLU}(W_1
      \mathrm{GAP}(\mathbf{U})))` (one weight per channel, hidden width
      :math:`5C / \mathrm{se\_reduction}`, no biases as in eq. 2), spatial attention
      :math:`\mathbf{m}_s = \sigma(a \cdot \mathrm{mean}_c(\mathbf{U}) + b)` (a 1x1
      convolution of the channel-mean map), and
      :math:`\mathbf{Y}' = \max(\mathbf{U} \odot \mathbf{m}_c,\ \mathbf{U} \odot
      \mathbf{m}_s)`. The text stops at :math:`\mathbf{Y}'` with :math:`5C` channels;
      the released 1x1 convolution + BatchNorm + ReLU back to :math:`C` channels is
      kept (docs/reference.md §6) so the module's output width stays
      :obj:`out_channels`. With the paper's dimensionality reduction,
      :obj:`in_channels` is the reduced width :math:`d' = \lfloor \min(D_v, D_t)/r
      \rfloor` and :obj:`out_channels` is :math:`d`.

    Item vectors :obj:`[N, C_in]` are treated as :math:`N` maps of size 1x1 (as the
    released implementation does). On a 1x1 map only the centre tap of a dilated 3x3
    kernel meets non-zero input and pooling and upsampling are identities, so every
    branch is an affine map; the fast path (:obj:`fast_path=True`) evaluates the five
    branches as **one** matrix product with the stacked :obj:`[5C, C_in]` weights
    (the centre taps of the 3x3 kernels) and one batch normalisation over the stacked
    statistics, which updates the five BatchNorm modules' running statistics exactly
    as their own forward passes would. Only the centre taps receive gradients there
    (the off-centre taps never meet the input of a 1x1 map, on either path). The
    gates use :math:`\mathbf{U} \ge 0` (a ReLU output): :math:`\max(a\mathbf{U},
    b\mathbf{U}) = \max(a, b)\,\mathbf{U}`. In training mode, BatchNorm sees the whole
    input (the whole item table) as its batch.

    Parameter names follow the released implementation (:obj:`branch1.0` conv,
    :obj:`branch1.1` BatchNorm, ..., :obj:`branch5_conv`, :obj:`branch5_bn`,
    :obj:`fusion.spatial.Conv1x1`, :obj:`fusion.channel.fc`, :obj:`conv_cat.0`,
    :obj:`conv_cat.1`), so a released state dict loads after stripping its
    :obj:`dream_<modality>.` prefix. The paper variant's attention has
    :obj:`fusion.channel.fc1`, :obj:`fusion.channel.fc2` and
    :obj:`fusion.spatial.conv` instead (no released counterpart).

    Args:
        in_channels (int): input channels :math:`C_{in}`.
        out_channels (int): channels :math:`C` of each branch and of the output.
        attention (str): ``'released'`` or ``'paper'``. (default: ``'released'``)
        se_reduction (int): squeeze-excitation reduction of the paper variant.
            (default: :obj:`16`)
        dilations (tuple of int): dilations of the three 3x3 branches.
            (default: :obj:`(6, 12, 18)`)
        bn_momentum (float): momentum of every BatchNorm. (default: :obj:`0.1`)
        fast_path (bool): evaluate :obj:`[N, C_in]` input with the fused affine
            computation instead of 1x1 convolutions. (default: :obj:`True`)

    Shapes:
        - **input:** item vectors :math:`(N, C_{in})` or maps
          :math:`(N, C_{in}, H, W)`
        - **output:** :math:`(N, C)` or :math:`(N, C, H, W)`
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: str = 'released',
        se_reduction: int = 16,
        dilations: Sequence[int] = (6, 12, 18),
        bn_momentum: float = 0.1,
        fast_path: bool = True,
    ):
        super().__init__()
        for name, value in (('in_channels', in_channels),
                            ('out_channels', out_channels),
                            ('se_reduction', se_reduction)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'DREAM: expected {name} to be a positive integer, '
                                 f'got {value!r}')
        if attention not in ATTENTIONS:
            raise ValueError(f'DREAM: expected attention in {ATTENTIONS}, got '
                             f'{attention!r}')
        dilations = tuple(dilations)
        if len(dilations) != 3 or not all(isinstance(r, int) and r >= 1
                                          for r in dilations):
            raise ValueError(f'DREAM: expected three positive integer dilations, got '
                             f'{dilations!r}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.attention = attention
        self.se_reduction = se_reduction
        self.dilations = dilations
        self.fast_path = fast_path

        def bn() -> BatchNorm2d:
            return BatchNorm2d(out_channels, momentum=bn_momentum)

        self.branch1 = Sequential(Conv2d(in_channels, out_channels, 1), bn(), ReLU())
        self.branch2 = Sequential(
            Conv2d(in_channels, out_channels, 3, padding=dilations[0],
                   dilation=dilations[0]), bn(), ReLU())
        self.branch3 = Sequential(
            Conv2d(in_channels, out_channels, 3, padding=dilations[1],
                   dilation=dilations[1]), bn(), ReLU())
        self.branch4 = Sequential(
            Conv2d(in_channels, out_channels, 3, padding=dilations[2],
                   dilation=dilations[2]), bn(), ReLU())
        self.branch5_conv = Conv2d(in_channels, out_channels, 1)
        self.branch5_bn = bn()
        fused = 5 * out_channels
        if attention == 'released':
            self.fusion = ReleasedAttention(fused)
        else:
            self.fusion = PaperAttention(fused, se_reduction)
        self.conv_cat = Sequential(Conv2d(fused, out_channels, 1), bn(), ReLU())

        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters and BatchNorm statistics (PyTorch's
        default initialisation, as in the released implementation)."""
        for module in self.modules():
            if module is not self and hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    # ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            self._check_channels(x, '[N, C]')
            if self.fast_path:
                return self._forward_vectors(x)
            n = x.size(0)
            return self._forward_maps(x.reshape(n, -1, 1, 1)).reshape(n, -1)
        if x.dim() == 4:
            self._check_channels(x, '[N, C, H, W]')
            return self._forward_maps(x)
        raise ValueError(f'DREAM: expected item vectors [N, {self.in_channels}] or '
                         f'feature maps [N, {self.in_channels}, H, W], got a tensor '
                         f'of shape {tuple(x.shape)}')

    def _check_channels(self, x: Tensor, layout: str) -> None:
        if x.size(1) != self.in_channels:
            raise ValueError(f'DREAM: expected {self.in_channels} input channels '
                             f'({layout} with C = {self.in_channels}), got a tensor of '
                             f'shape {tuple(x.shape)}')

    def _forward_maps(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = F.adaptive_avg_pool2d(x, 1)
        glob = F.relu(self.branch5_bn(self.branch5_conv(pooled)))
        glob = F.interpolate(glob, size=size, mode='bilinear', align_corners=True)
        u = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x),
                       self.branch4(x), glob], dim=1)
        return self.conv_cat(self.fusion(u))

    def _branch_weights(self) -> Tuple[Tensor, Tensor]:
        """The five branches as one affine map: ``[5C, C_in]`` weight, ``[5C]`` bias.
        3x3 kernels contribute their centre taps."""
        convs = [self.branch1[0], self.branch2[0], self.branch3[0], self.branch4[0],
                 self.branch5_conv]
        weight = torch.cat(
            [conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2]
             for conv in convs], dim=0)
        bias = torch.cat([conv.bias for conv in convs], dim=0)
        return weight, bias

    def _forward_vectors(self, x: Tensor) -> Tensor:
        weight, bias = self._branch_weights()
        u = F.linear(x, weight, bias)
        bns = [self.branch1[1], self.branch2[1], self.branch3[1], self.branch4[1],
               self.branch5_bn]
        # In-place ReLUs are safe: batch norm's backward needs its input, not its
        # output, and they save two [N, 5C] / [N, C] buffers.
        u = F.relu(batch_norm_stacked(u, bns), inplace=True)
        y = self.fusion.forward_vectors(u)
        conv = self.conv_cat[0]
        y = F.linear(y, conv.weight.view(conv.out_channels, -1), conv.bias)
        return F.relu(batch_norm_stacked(y, [self.conv_cat[1]]), inplace=True)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, '
                f'attention={self.attention!r}, dilations={self.dilations}')


class ReleasedAttention(torch.nn.Module):
    r"""DREAM's attention as released: a spatial gate
    :math:`\sigma(\mathbf{w}_s^\top \mathbf{U})` over all channels, a per-sample
    scalar gate :math:`\mathrm{ReLU}(\mathbf{w}_c^\top \mathrm{GAP}(\mathbf{U}))`
    (nearest-upsampled), their element-wise maximum, times :math:`\mathbf{U}`."""

    def __init__(self, channels: int):
        super().__init__()
        self.spatial = ReleasedSpatialGate(channels)
        self.channel = ReleasedChannelGate(channels)

    def forward(self, u: Tensor) -> Tensor:
        return torch.max(u * self.channel(u), u * self.spatial(u)) * u

    def forward_vectors(self, u: Tensor) -> Tensor:
        """The same on ``[N, 5C]`` rows (1x1 maps) with ``u >= 0``: both gates are
        one scalar per row, and ``max(u c, u s) u = u^2 max(c, s)``."""
        weight = torch.cat([self.spatial.Conv1x1.weight.view(1, -1),
                            self.channel.fc.weight.view(1, -1)])
        return _ReleasedGateProduct.apply(u, weight)


class _ReleasedGateProduct(torch.autograd.Function):
    r""":math:`\mathbf{v} = \mathbf{u}^2 \max(\mathrm{ReLU}(\mathbf{w}_c^\top
    \mathbf{u}), \sigma(\mathbf{w}_s^\top \mathbf{u}))` per row, with the gradient
    written out:

    .. math::
        \partial\mathbf{u} = 2 g\, (\bar{\mathbf{v}} \odot \mathbf{u}) +
        \bar{g}_s \mathbf{w}_s + \bar{g}_c \mathbf{w}_c, \qquad
        \bar{g} = \langle \bar{\mathbf{v}} \odot \mathbf{u}, \mathbf{u} \rangle,

    where :math:`\bar{g}` goes to the gate that wins the maximum (half to each on a
    tie, as :func:`torch.maximum`). Written by hand because autograd keeps two
    :obj:`[N, 5C]` intermediates and spends about twice the passes over them.
    """

    @staticmethod
    def forward(ctx, u: Tensor, weight: Tensor) -> Tensor:
        pre = u @ weight.t()  # [N, 2]: spatial, channel
        s = torch.sigmoid(pre[:, :1])
        c = F.relu(pre[:, 1:])
        g = torch.maximum(c, s)
        ctx.save_for_backward(u, weight, s, c, g)
        return torch.mul(u, g).mul_(u)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_v: Tensor):
        u, weight, s, c, g = ctx.saved_tensors
        vu = grad_v * u
        grad_g = torch.einsum('nc,nc->n', vu, u).unsqueeze(1)
        to_s = (s > c).to(u.dtype) + 0.5 * (s == c).to(u.dtype)
        grad_pre = torch.cat([grad_g * to_s * s * (1.0 - s),
                              grad_g * (1.0 - to_s) * (c > 0).to(u.dtype)], dim=1)
        grad_u = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = grad_pre.t() @ u
        if ctx.needs_input_grad[0]:
            grad_u = vu.mul_(2.0 * g).addmm_(grad_pre, weight)
        return grad_u, grad_weight


class ReleasedSpatialGate(torch.nn.Module):
    r""":math:`\sigma(\mathrm{conv}_{1\times1}(\mathbf{U}))`, all channels to one."""

    def __init__(self, channels: int):
        super().__init__()
        self.Conv1x1 = Conv2d(channels, 1, 1, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        return torch.sigmoid(self.Conv1x1(u))


class ReleasedChannelGate(torch.nn.Module):
    r""":math:`\mathrm{ReLU}(\mathrm{conv}_{1\times1}(\mathrm{GAP}(\mathbf{U})))`,
    one scalar per sample, upsampled (nearest) to the map size."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = Conv2d(channels, 1, 1, bias=False)

    def forward(self, u: Tensor) -> Tensor:
        c = F.relu(self.fc(F.adaptive_avg_pool2d(u, 1)))
        return F.interpolate(c, size=u.shape[-2:], mode='nearest')


class PaperAttention(torch.nn.Module):
    r"""DREAM's attention as the paper describes it (eqs. 2-6): squeeze-excitation
    channel weights, a spatial gate from the channel-mean map, element-wise maximum.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.channel = SqueezeExcitation(channels, reduction)
        self.spatial = MeanSpatialGate()

    def forward(self, u: Tensor) -> Tensor:
        return torch.max(u * self.channel(u), u * self.spatial(u))

    def forward_vectors(self, u: Tensor) -> Tensor:
        """The same on ``[N, 5C]`` rows (1x1 maps) with ``u >= 0``:
        ``max(u m_c, u m_s) = u max(m_c, m_s)``."""
        m_c = self.channel.excite(u)
        conv = self.spatial.conv
        m_s = torch.sigmoid(u.mean(dim=1, keepdim=True) * conv.weight.view(1, 1) +
                            conv.bias)
        return u * torch.maximum(m_c, m_s)


class SqueezeExcitation(torch.nn.Module):
    r"""Channel weights
    :math:`\sigma(W_2\, \mathrm{ReLU}(W_1 \mathrm{GAP}(\mathbf{U})))`
    (eq. 2; no biases, as written there), hidden width
    :math:`\max(1, \lfloor C / \mathrm{reduction} \rfloor)`."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = Linear(channels, hidden, bias=False)
        self.fc2 = Linear(hidden, channels, bias=False)

    def excite(self, z: Tensor) -> Tensor:
        """Channel weights ``[N, C]`` from pooled features ``[N, C]``."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(z))))

    def forward(self, u: Tensor) -> Tensor:
        return self.excite(u.mean(dim=(2, 3)))[:, :, None, None]


class MeanSpatialGate(torch.nn.Module):
    r""":math:`\sigma(\mathrm{conv}_{1\times1}(\mathrm{mean}_c \mathbf{U}))`
    (eq. 4): a 1x1 convolution (one weight, one bias) of the channel-mean map."""

    def __init__(self):
        super().__init__()
        self.conv = Conv2d(1, 1, 1)

    def forward(self, u: Tensor) -> Tensor:
        return torch.sigmoid(self.conv(u.mean(dim=1, keepdim=True)))


def batch_norm_stacked(x: Tensor, bns: Sequence[_BatchNorm]) -> Tensor:
    r"""Batch normalisation of :obj:`[N, sum C_k]` rows whose column blocks belong to
    the BatchNorm modules :obj:`bns` (in order), as one
    :func:`torch.nn.functional.batch_norm` call.

    Behaves like calling each module on its block of columns (viewed as 1x1 maps):
    the same output, and in training mode the same updates of every module's
    :obj:`running_mean`, :obj:`running_var` and :obj:`num_batches_tracked`.
    Written out because the BatchNorm modules only accept their own layout and
    one call per module would cost a pass (and a copy) per block.
    """
    first = bns[0]
    for bn in bns[1:]:
        if (bn.training != first.training or bn.eps != first.eps
                or bn.momentum != first.momentum or bn.affine != first.affine
                or bn.track_running_stats != first.track_running_stats):
            raise ValueError('batch_norm_stacked: expected BatchNorm modules with the '
                             'same mode, eps, momentum, affine and tracking settings')
    training = first.training
    # The same decisions as torch.nn.modules.batchnorm._BatchNorm.forward:
    factor = 0.0 if first.momentum is None else first.momentum
    if training and first.track_running_stats and first.num_batches_tracked is not None:
        for bn in bns:
            bn.num_batches_tracked.add_(1)
        if first.momentum is None:  # cumulative moving average
            factor = 1.0 / float(first.num_batches_tracked)
    bn_training = training or (first.running_mean is None and first.running_var is None)
    use_stats = ((not training or first.track_running_stats)
                 and first.running_mean is not None)

    def stack(name: str) -> Tensor:
        tensors = [getattr(bn, name) for bn in bns]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

    running_mean = stack('running_mean') if use_stats else None
    running_var = stack('running_var') if use_stats else None
    weight = stack('weight') if first.affine else None
    bias = stack('bias') if first.affine else None
    out = F.batch_norm(x, running_mean, running_var, weight, bias, bn_training, factor,
                       first.eps)
    if bn_training and use_stats and len(bns) > 1:
        # F.batch_norm updated the stacked copies; hand the new values back.
        sizes: List[int] = [bn.num_features for bn in bns]
        for bn, mean, var in zip(bns, running_mean.split(sizes),
                                 running_var.split(sizes)):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
    return out
