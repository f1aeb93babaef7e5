"""Convolutional building blocks of the searched networks (NAS-Lung's residual 3D block).

A block is two 3x3x3 conv-BN-ReLU layers plus a 1x1x1 conv-BN-ReLU projection shortcut, summed.
Stages are joined by a stride-2 3x3x3 conv-BN-ReLU that halves every spatial side ("pooling").
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv3d -> BatchNorm3d -> ReLU with 'same' padding for odd kernels."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm3d(out_ch),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two 3x3x3 conv layers plus a 1x1x1 projection shortcut (always projected, as in NAS-Lung)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(in_ch, out_ch, 3)
        self.conv2 = ConvBNReLU(out_ch, out_ch, 3)
        self.shortcut = ConvBNReLU(in_ch, out_ch, 1)
        self.in_ch, self.out_ch = in_ch, out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class Downsample(ConvBNReLU):
    """The strided convolution between stages: keeps channels, halves each spatial side."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, stride=2)
