"""3D CBAM (Woo et al. 2018): a channel gate followed by a spatial gate.

Two variants share one module:

* ``"original"`` -- the paper's CBAM: sigmoid channel gate (MLP with ReLU), 7x7x7 spatial conv,
  output ``s * (c * x)``.
* ``"naslung"`` -- the NAS-Lung formulation: a *softmax* over channels (linear MLP, no hidden
  activation), a 3x3x3 spatial conv, and a residual output ``s * x + x``: the channel-gated
  features only steer where the spatial map looks; the map then re-weights the raw input.

Every CBAM owns a submodule ``spatial_gate`` whose forward output is the spatial attention map
(N, 1, d, h, w) in [0, 1]; explanation code reads it with a forward hook, nothing is stored here.
"""
from __future__ import annotations

import torch
from torch import nn

VARIANTS = ("naslung", "original")


class ChannelGate(nn.Module):
    """Channel weights (N, C, 1, 1, 1) from global average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 4, gate: str = "sigmoid") -> None:
        super().__init__()
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"channel gate must be 'sigmoid' or 'softmax', got {gate!r}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        # The original CBAM puts a ReLU in its MLP; NAS-Lung's softmax gate has none.
        self.act = nn.ReLU(inplace=True) if gate == "sigmoid" else nn.Identity()
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3, 4))
        mx = x.amax(dim=(2, 3, 4))
        z = self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx)))
        w = torch.softmax(z, dim=1) if self.gate == "softmax" else torch.sigmoid(z)
        return w[:, :, None, None, None]


class SpatialGate(nn.Module):
    """Spatial attention map (N, 1, d, h, w) in [0, 1] from channel max and mean."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        if desc.device.type == "cpu" and self.conv.kernel_size[0] > 3:
            # Same convolution, other memory layout: on a CPU the 2 -> 1 channel 7x7x7 conv's backward
            # takes ~4x longer in the default layout than in channels-last (oneDNN); it made the
            # "original"-CBAM nets 2-3x slower per training step than wider "naslung"-CBAM nets.
            desc = desc.contiguous(memory_format=torch.channels_last_3d)
        return torch.sigmoid(self.conv(desc))


class CBAM3d(nn.Module):
    """Channel then spatial attention; see the module docstring for the two variants."""

    def __init__(self, channels: int, variant: str = "naslung", reduction: int = 4) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"CBAM variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.channel_gate = ChannelGate(channels, reduction,
                                        gate="softmax" if variant == "naslung" else "sigmoid")
        self.spatial_gate = SpatialGate(3 if variant == "naslung" else 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = self.channel_gate(x) * x
        s = self.spatial_gate(xc)
        if self.variant == "naslung":
            return s * x + x
        return s * xc


def make_cbam(channels: int, variant: str) -> nn.Module:
    """A CBAM for ``variant`` in ("naslung", "original"), or an identity for ``"none"``."""
    if variant == "none":
        return nn.Identity()
    return CBAM3d(channels, variant)
