"""The crop specification: one dataclass shared by preparation, training, bundles and the server.

A crop is a cube of ``size`` voxels at ``spacing_mm`` isotropic spacing, stored in Hounsfield units
(int16) and mapped to network input by :meth:`CropSpec.normalize`. Keeping the mapping here means
the server can never disagree with training about windowing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from naslung.configio import strict_from_dict


@dataclass(frozen=True)
class CropSpec:
    size: int = 32
    spacing_mm: float = 1.0
    hu_min: float = -1000.0
    hu_max: float = 400.0
    pad_hu: float = -1000.0

    def __post_init__(self) -> None:
        if self.size < 4:
            raise ValueError(f"crop size must be >= 4 voxels, got {self.size}")
        if not self.spacing_mm > 0:
            raise ValueError(f"crop spacing must be positive, got {self.spacing_mm}")
        if not self.hu_max > self.hu_min:
            raise ValueError(f"HU window is empty: [{self.hu_min}, {self.hu_max}]")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """HU -> float32 in [0, 1] by clipping to the window (works on any array shape)."""
        x = np.asarray(hu, dtype=np.float32)
        return np.clip((x - self.hu_min) / (self.hu_max - self.hu_min), 0.0, 1.0)

    def normalize_torch(self, hu: "torch.Tensor") -> "torch.Tensor":
        """The same mapping as :meth:`normalize` for a tensor already on its device."""
        return ((hu.float() - self.hu_min) / (self.hu_max - self.hu_min)).clamp_(0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CropSpec":
        return strict_from_dict(cls, d, "crop-spec")
