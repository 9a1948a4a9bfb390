r"""SMORE's spectrum convolution (`"Spectrum-based Modality Representation Fusion
Graph Convolutional Network for Multimodal Recommendation"
<https://arxiv.org/abs/2412.14978>`_, Ong & Khong, WSDM 2025): learnable filters
on the real Fourier transform of each item's feature vector.

With :math:`\mathcal{F}` the orthonormal real FFT over the :math:`d` feature
channels of a row (``torch.fft.rfft(..., norm='ortho')``, :math:`\lfloor d/2
\rfloor + 1` complex coefficients) and :math:`\mathcal{F}^{-1}` its inverse onto
:math:`d` channels, the filter of modality :math:`m` and the fusion filter are

.. math::
    \mathbf{C}_m = \mathcal{F}^{-1}\big(\mathcal{F}(\mathbf{T}_m) \odot
    \mathbf{w}_m\big), \qquad
    \mathbf{C}_f = \mathcal{F}^{-1}\Big(\big(\textstyle\prod_m
    \mathcal{F}(\mathbf{T}_m)\big) \odot \mathbf{w}_f\Big),

with complex weights :math:`\mathbf{w}_m, \mathbf{w}_f \in
\mathbb{C}^{\lfloor d/2\rfloor + 1}` shared by all rows: a per-modality denoising
filter, and a product of the spectra (a circular convolution of the modalities in
feature space) filtered once, the cross-modality fusion.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ['SpectralFilter']


class SpectralFilter(torch.nn.Module):
    r"""SMORE's uni-modal and fusion filters in the frequency domain (see the module
    docstring for the equations).

    Args:
        channels (int): the width :math:`d` of each modality's rows.
        num_modalities (int): :math:`M \ge 1`, the number of inputs of
            :meth:`forward`.

    The weights are stored as real ``[1, d // 2 + 1, 2]`` tensors (real and
    imaginary parts), drawn from a standard normal distribution as in SMORE's code.

    **Shapes:**
        - **input:** :math:`M` tensors :math:`(N, d)`
        - **output:** ``(filtered, fusion)``: a list of :math:`M` tensors
          :math:`(N, d)` and one :math:`(N, d)`
    """

    def __init__(self, channels: int, num_modalities: int) -> None:
        super().__init__()
        if channels < 1 or num_modalities < 1:
            raise ValueError(f'SpectralFilter: expected channels >= 1 and '
                             f'num_modalities >= 1, got {channels} and '
                             f'{num_modalities}')
        self.channels = int(channels)
        self.num_modalities = int(num_modalities)
        shape = (1, self.channels // 2 + 1, 2)
        self.modality_weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(shape)) for _ in range(num_modalities)])
        self.fusion_weight = torch.nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w in [*self.modality_weights, self.fusion_weight]:
            torch.nn.init.normal_(w)

    def forward(self, xs: Sequence[Tensor]) -> Tuple[List[Tensor], Tensor]:
        if len(xs) != self.num_modalities:
            raise ValueError(f'SpectralFilter: expected {self.num_modalities} inputs, '
                             f'got {len(xs)}')
        d = self.channels
        spectra = [torch.fft.rfft(x, dim=1, norm='ortho') for x in xs]
        filtered = [torch.fft.irfft(s * torch.view_as_complex(w), n=d, dim=1,
                                    norm='ortho')
                    for s, w in zip(spectra, self.modality_weights)]
        product = spectra[0]
        for s in spectra[1:]:
            product = product * s
        fusion = torch.fft.irfft(product * torch.view_as_complex(self.fusion_weight),
                                 n=d, dim=1, norm='ortho')
        return filtered, fusion

    def extra_repr(self) -> str:
        return f'channels={self.channels}, num_modalities={self.num_modalities}'
