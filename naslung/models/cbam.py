"""3D CBAM (Woo et al. 2018): a channel gate followed by a spatial gate.

One module, three variants; a variant is a :class:`CBAMStyle` (which activation each gate uses,
the spatial kernel, how the output is formed), so code that mirrors the maths (the fast ensemble
engine) reads the style instead of branching on names:

* ``"original"`` -- the paper's CBAM: sigmoid channel gate (MLP with ReLU), 7x7x7 spatial conv,
  sigmoid spatial gate, output ``s * (c * x)``.
* ``"naslung-exact"`` -- NAS-Lung's ``ResCBAMLayer`` (``models/layers.py`` of fei-aiart/NAS-Lung)
  as written: a *softmax* over channels (linear MLP, no hidden activation), a 3x3x3 spatial conv,
  a *softmax over all voxels* for the spatial map, and a residual output ``s * x + x``. The voxel
  softmax sums to one over the map, so each voxel's weight is ~1/(d h w): the attention is a
  small perturbation of the identity, which is what the published network trains.
* ``"naslung"`` -- the same with a *sigmoid* spatial gate (each voxel's weight in [0, 1], not
  normalised over the map). This is our deviation from the published code, kept as the default
  of older configs and bundles; the search may choose any of the three.

Every CBAM owns a submodule ``spatial_gate`` whose forward output is the spatial attention map
(N, 1, d, h, w) in [0, 1]; explanation code reads it with a forward hook, nothing is stored here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CBAMStyle:
    """The choices that make one CBAM variant.

    Args:
        channel_act: "sigmoid" (per channel) or "softmax" (over channels) for the channel weights.
        hidden_relu: a ReLU between the channel MLP's two layers.
        spatial_kernel: edge of the spatial gate's conv.
        spatial_act: "sigmoid" (per voxel) or "softmax" (over all voxels of the map).
        residual: output ``s * x + x`` (NAS-Lung) instead of ``s * (c * x)`` (CBAM).
    """

    channel_act: str
    hidden_relu: bool
    spatial_kernel: int
    spatial_act: str
    residual: bool


CBAM_STYLES: dict[str, CBAMStyle] = {
    "naslung": CBAMStyle("softmax", False, 3, "sigmoid", True),
    "naslung-exact": CBAMStyle("softmax", False, 3, "softmax", True),
    "original": CBAMStyle("sigmoid", True, 7, "sigmoid", False),
}
VARIANTS = tuple(CBAM_STYLES)


class ChannelGate(nn.Module):
    """Channel weights (N, C, 1, 1, 1) from global average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 4, gate: str = "sigmoid", hidden_relu: bool | None = None) -> None:
        super().__init__()
        if gate not in ("sigmoid", "softmax"):
            raise ValueError(f"channel gate must be 'sigmoid' or 'softmax', got {gate!r}")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        # The original CBAM puts a ReLU in its MLP; NAS-Lung's softmax gate has none.
        relu = gate == "sigmoid" if hidden_relu is None else hidden_relu
        self.act = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3, 4))
        mx = x.amax(dim=(2, 3, 4))
        z = self.fc2(self.act(self.fc1(avg))) + self.fc2(self.act(self.fc1(mx)))
        w = torch.softmax(z, dim=1) if self.gate == "softmax" else torch.sigmoid(z)
        return w[:, :, None, None, None]


def spatial_activation(logits: torch.Tensor, act: str) -> torch.Tensor:
    """The spatial map from the gate conv's logits (N, 1, d, h, w): per-voxel sigmoid, or a
    softmax over every voxel of each sample's map (NAS-Lung's ``sp_Softmax``)."""
    if act == "softmax":
        n = logits.shape[0]
        return torch.softmax(logits.reshape(n, -1).float(), dim=1).to(logits.dtype).view_as(logits)
    return torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """Spatial attention map (N, 1, d, h, w) in [0, 1] from channel max and mean."""

    def __init__(self, kernel_size: int = 7, act: str = "sigmoid") -> None:
        super().__init__()
        if act not in ("sigmoid", "softmax"):
            raise ValueError(f"spatial gate must be 'sigmoid' or 'softmax', got {act!r}")
        self.conv = nn.Conv3d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        desc = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        if desc.device.type == "cpu" and self.conv.kernel_size[0] > 3:
            # Same convolution, other memory layout: on a CPU the 2 -> 1 channel 7x7x7 conv's backward
            # takes ~4x longer in the default layout than in channels-last (oneDNN); it made the
            # "original"-CBAM nets 2-3x slower per training step than wider "naslung"-CBAM nets.
            desc = desc.contiguous(memory_format=torch.channels_last_3d)
        return spatial_activation(self.conv(desc), self.act)


class CBAM3d(nn.Module):
    """Channel then spatial attention; see the module docstring for the variants.

    Args:
        channels: feature channels C of the input (N, C, d, h, w).
        variant: a key of :data:`CBAM_STYLES`.
        reduction: the channel MLP's hidden width is ``max(1, C // reduction)``.

    Raises:
        ValueError: for an unknown variant.
    """

    def __init__(self, channels: int, variant: str = "naslung", reduction: int = 4) -> None:
        super().__init__()
        if variant not in CBAM_STYLES:
            raise ValueError(f"CBAM variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.style = style = CBAM_STYLES[variant]
        self.channel_gate = ChannelGate(channels, reduction, gate=style.channel_act, hidden_relu=style.hidden_relu)
        self.spatial_gate = SpatialGate(style.spatial_kernel, style.spatial_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xc = self.channel_gate(x) * x
        s = self.spatial_gate(xc)
        if self.style.residual:
            return s * x + x
        return s * xc


def make_cbam(channels: int, variant: str) -> nn.Module:
    """A CBAM for a variant of :data:`CBAM_STYLES`, or an identity for ``"none"``."""
    if variant == "none":
        return nn.Identity()
    return CBAM3d(channels, variant)
