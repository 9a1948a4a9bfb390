r"""MambaRec's dimensionality reduction of raw modality features (Section 4.3)."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear

__all__ = ['Projection', 'reduced_width']


class Projection(torch.nn.Module):
    r"""The linear dimensionality reduction of MambaRec from the `"MambaRec:
    Multimodal Recommendation with Local and Global Alignment"
    <https://doi.org/10.1145/3746252>`_ paper (CIKM 2025, eq. 12),
    :math:`\mathbf{X}' = \mathbf{X} W`, optionally in two stages.

    With :obj:`hidden_features=None` it is one :class:`~torch.nn.Linear`
    (:obj:`trs`, :math:`D \to d`). With :obj:`hidden_features=h` it is

    .. math::
        \mathbf{X}' = (\mathbf{X} W_1^\top + \mathbf{b}_1) W_2^\top + \mathbf{b}_2,

    :obj:`reduce` (:math:`D \to h`) then :obj:`trs` (:math:`h \to d`) with nothing
    in between, as the released visual projection :math:`D_v \to D_v / r \to d`.
    The released parameter names map as :obj:`image_reduce.* -> reduce.*`,
    :obj:`image_trs.* -> trs.*` and :obj:`text_trs.* -> trs.*`.

    Two affine maps with nothing between them are one affine map, so by default
    (:obj:`fused=True`) the forward pass computes

    .. math::
        \mathbf{X}' = \mathbf{X} (W_2 W_1)^\top + (W_2 \mathbf{b}_1 + \mathbf{b}_2),

    which costs :math:`N D d` instead of :math:`N D h` multiply-adds (8x less for
    the released :math:`4096 \to 512 \to 64`) and is the same function with the same
    gradients for :math:`W_1, \mathbf{b}_1, W_2, \mathbf{b}_2` and :math:`\mathbf{X}`
    (autograd differentiates through the composition). :obj:`fused=False` computes
    the two stages one after the other.

    Args:
        in_features (int): input width :math:`D`.
        out_features (int): output width :math:`d`.
        hidden_features (int, optional): width :math:`h` of the intermediate stage;
            :obj:`None` for a single linear map. (default: :obj:`None`)
        bias (bool): whether the linear maps have biases. (default: :obj:`True`)
        fused (bool): compute two stages as their composed map.
            (default: :obj:`True`)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Optional[int] = None,
        bias: bool = True,
        fused: bool = True,
    ):
        super().__init__()
        for name, value in (('in_features', in_features),
                            ('out_features', out_features),
                            ('hidden_features', 1 if hidden_features is None
                             else hidden_features)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'Projection: expected {name} to be a positive '
                                 f'integer, got {value!r}')
        self.in_features = in_features
        self.out_features = out_features
        self.hidden_features = hidden_features
        self.fused = fused
        if hidden_features is None:
            self.reduce: Optional[Linear] = None
            self.trs = Linear(in_features, out_features, bias=bias)
        else:
            self.reduce = Linear(in_features, hidden_features, bias=bias)
            self.trs = Linear(hidden_features, out_features, bias=bias)

        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all learnable parameters (PyTorch's :class:`~torch.nn.Linear`
        initialisation, as in the released implementation)."""
        if self.reduce is not None:
            self.reduce.reset_parameters()
        self.trs.reset_parameters()

    def composed(self) -> Tuple[Tensor, Optional[Tensor]]:
        r"""The composed map as :obj:`(weight [out, in], bias [out] or None)`."""
        if self.reduce is None:
            return self.trs.weight, self.trs.bias
        weight = self.trs.weight @ self.reduce.weight
        if self.reduce.bias is None:
            return weight, None
        return weight, F.linear(self.reduce.bias, self.trs.weight, self.trs.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 1 or x.size(-1) != self.in_features:
            raise ValueError(f'Projection: expected input [..., {self.in_features}], '
                             f'got a tensor of shape {tuple(x.shape)}')
        if self.reduce is None:
            return self.trs(x)
        if not self.fused:
            return self.trs(self.reduce(x))
        weight, bias = self.composed()
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        hidden = '' if self.hidden_features is None else f'{self.hidden_features} -> '
        return f'{self.in_features} -> {hidden}{self.out_features}, fused={self.fused}'


def reduced_width(dims: Union[int, Iterable[int]], reduction_factor: int) -> int:
    r"""The projected width of the paper's dimensionality reduction (eq. 13),

    .. math::
        d' = \left\lfloor \frac{\min(D_v, D_t)}{r} \right\rfloor,

    for any number of modality widths :obj:`dims` (48 for the paper's
    :math:`D_v = 4096, D_t = 384` at :math:`r = 8`). A single width gives
    :math:`\lfloor D / r \rfloor`, the hidden width of the released two-stage visual
    projection (512 for :math:`D_v = 4096`).

    Args:
        dims (int or iterable of int): raw feature widths of the modalities.
        reduction_factor (int): the reduction factor :math:`r \ge 1`.
    """
    dims = [dims] if isinstance(dims, int) else [int(v) for v in dims]
    if len(dims) == 0 or min(dims) < 1:
        raise ValueError(f'reduced_width: expected one or more positive feature '
                         f'widths, got {dims!r}')
    if not isinstance(reduction_factor, int) or reduction_factor < 1:
        raise ValueError(f'reduced_width: expected a positive integer reduction '
                         f'factor, got {reduction_factor!r}')
    width = min(dims) // reduction_factor
    if width < 1:
        raise ValueError(f'reduced_width: min(dims) = {min(dims)} over reduction '
                         f'factor {reduction_factor} leaves no dimension')
    return width
