"""The searched network: stem, stages of residual blocks with CBAM, global pooling, a head.

Layout (NAS-Lung's ConvRes, with adaptive pooling so any crop size and depth works)::

    stem:   conv 1->w0, conv w0->w0, CBAM
    stage:  stride-2 conv (halves d, h, w), residual blocks of the given widths, CBAM
    pool:   global average -> (N, C_last)      == model.embed(x)
    head:   softmax / A-Softmax / AM-Softmax   -> logits (N, num_classes)
"""
from __future__ import annotations

import torch
from torch import nn

from naslung.models.blocks import ConvBNReLU, Downsample, ResidualBlock
from naslung.models.cbam import make_cbam
from naslung.models.config import ModelConfig
from naslung.models.heads import make_head


class NASLungNet(nn.Module):
    """A residual 3D CNN with CBAM built from a :class:`ModelConfig`.

    Input: float (N, 1, S, S, S) already normalised by the CropSpec.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.stem_width
        self.stem = nn.Sequential(ConvBNReLU(1, w), ConvBNReLU(w, w), make_cbam(w, cfg.cbam))
        stages = []
        for widths in cfg.stages:
            layers: list[nn.Module] = [Downsample(w)]
            for width in widths:
                layers.append(ResidualBlock(w, width))
                w = width
            layers.append(make_cbam(w, cfg.cbam))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.num_features = w
        self.head = make_head(cfg.head, w, cfg.num_classes, cfg.margin, getattr(cfg, "scale", None))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (N, C, d, h, w) -- the natural Grad-CAM layer."""
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input (N, 1, D, H, W), got {tuple(x.shape)}")
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The feature vector (N, C_last) the head sees."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference logits (N, num_classes); angular heads give |x| cos(theta) or s cos(theta)."""
        return self.head(self.embed(x))

    def margin_logits(self, x: torch.Tensor, target: torch.Tensor, step: int | None = None,
                      lam: float | None = None) -> torch.Tensor:
        """Training logits with the head's margin on the target class (see heads.py)."""
        return self.head.margin_logits(self.embed(x), target, step=step, lam=lam)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes): softmax of the inference logits, for every head."""
        return torch.softmax(self(x).float(), dim=1)

    def cbam_modules(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every CBAM block, stem first; empty when cbam == "none"."""
        return [(n, m) for n, m in self.named_modules() if hasattr(m, "spatial_gate")]


def build_model(cfg: ModelConfig) -> NASLungNet:
    """The network for ``cfg`` with fresh weights (seed torch beforehand for reproducibility)."""
    return NASLungNet(cfg)
