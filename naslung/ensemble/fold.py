"""Few-channel 3D convolutions as cuDNN 2D convolutions: the x axis folded into the channels.

Why: a 3x3x3 conv with 1-8 input channels is a poor implicit GEMM (each output voxel gathers
27 taps of a few bytes; our Triton kernel ran a 4->4 conv on 1024 crops of 32^3 in 2.1 ms on an
H200, 14x its memory floor). Read the padded channels-last buffer ``(N, D+2, H+2, W+2, C)`` as
a 2D image ``(N, D+2, H+2)`` with ``(W+2) * C`` channels and the conv becomes a *2D* 3x3 conv
over (z, y) whose weight is banded along x::

    W2[(xo, co), (xp, ci), kz, ky] = W[co, ci, kz, ky, kx]   where xp = xo * stride + kx + 1 - pad

(zero elsewhere). That multiplies the FLOPs by ~W/3, but cuDNN runs 2D convs with 128-256
channels at 300-460 TFLOP/s, so the 4->4 conv takes 0.8 ms (``docs/benchmarks.md``). The buffer's
zero border is the x padding (it is part of the channels) and, with the 2D conv's own padding of
``pad - 1``, the z/y padding. The result is unpadded ``(N, Do, Ho, Wo, Cout)``;
:func:`naslung.ensemble.kernels.bias_act_pad` adds the bias, ReLU and residual and writes the
next padded buffer in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class FoldedConv:
    """A (BN-folded) cubic Conv3d kept for folding; the banded 2D weight is built per input width."""

    weight: torch.Tensor  # (COUT, CIN, k, k, k) in the activation dtype
    bias: torch.Tensor | None  # (COUT,) fp32
    stride: int
    pad: int
    _banded: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def cin(self) -> int:
        return self.weight.shape[1]

    @property
    def cout(self) -> int:
        return self.weight.shape[0]

    @property
    def ks(self) -> int:
        return self.weight.shape[-1]

    def out_size(self, size: int) -> int:
        return (size + 2 * self.pad - self.ks) // self.stride + 1

    def banded(self, width: int, x_border: int = 1) -> torch.Tensor:
        """The 2D weight ``(Wo * COUT, (W + 2 * x_border) * CIN, k, k)`` for inputs ``width`` voxels wide."""
        key = (width, x_border)
        if key not in self._banded:
            self._banded[key] = band_weight(self.weight, width, self.stride, self.pad, x_border)
        return self._banded[key]


def pack_folded(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
                dtype: torch.dtype) -> FoldedConv:
    """Keep a cubic conv ``weight`` (COUT, CIN, k, k, k) for :func:`folded_conv`."""
    cout, cin, kd, kh, kw = weight.shape
    if not kd == kh == kw or kd % 2 == 0 or padding != kd // 2 or padding < 1:
        raise ValueError(f"folding needs an odd cubic kernel with 'same' padding >= 1, got {tuple(weight.shape)} "
                         f"padding {padding}")
    b = None if bias is None else bias.detach().float().contiguous()
    return FoldedConv(weight.detach().to(dtype).contiguous(), b, stride, padding)


def band_weight(weight: torch.Tensor, width: int, stride: int, pad: int, x_border: int = 1) -> torch.Tensor:
    """The banded 2D weight of the module docstring, channels-last (cuDNN's fast layout), for an
    input with ``x_border`` zero voxels at each x end (taps beyond them are the conv's zero padding)."""
    cout, cin, k = weight.shape[0], weight.shape[1], weight.shape[-1]
    wo = (width + 2 * pad - k) // stride + 1
    wi = width + 2 * x_border
    w2 = torch.zeros(wo, cout, wi, cin, k, k, dtype=weight.dtype, device=weight.device)
    for xo in range(wo):
        for kx in range(k):
            xp = xo * stride + kx + x_border - pad
            if 0 <= xp < wi:
                w2[xo, :, xp] = weight[:, :, :, :, kx]
    w2 = w2.reshape(wo * cout, wi * cin, k, k)
    return w2.contiguous(memory_format=torch.channels_last)


def folded_conv(x: torch.Tensor, fc: FoldedConv, x_border: int = 1) -> torch.Tensor:
    """Padded NDHWC ``x`` -> the conv's raw output (no bias), unpadded NDHWC (N, Do, Ho, Wo, COUT).

    ``x`` has a one-voxel zero border in z and y, and ``x_border`` zero voxels at each x end.
    """
    n, dp, hp, wp, c = x.shape
    if c != fc.cin:
        raise ValueError(f"folded conv expects {fc.cin} input channels, buffer has {c}")
    width = wp - 2 * x_border
    image = x.view(n, dp, hp, wp * c).permute(0, 3, 1, 2)  # NCHW view with channels-last strides
    y = F.conv2d(image, fc.banded(width, x_border), None, fc.stride, fc.pad - 1)
    y = y.contiguous(memory_format=torch.channels_last)  # a no-op for cuDNN's output; safe elsewhere
    do, ho = y.shape[2], y.shape[3]
    return y.permute(0, 2, 3, 1).view(n, do, ho, fc.out_size(width), fc.cout)
