"""The crop specification: one dataclass shared by preparation, training, bundles and the server.

A crop is a cube of ``size`` voxels at ``spacing_mm`` isotropic spacing, stored in Hounsfield units
(int16) and mapped to network input by :meth:`CropSpec.normalize`. Keeping the mapping here means
the server can never disagree with training about windowing.

The field-of-view guard lives here too. ``fov_mm = (x, y, z)`` keeps only a centred box of that
size and sets everything outside it to ``pad_hu`` before normalising. The lidc-voi VOIs end at the
nodule's own extent, so without a box the share of -1000 HU padding in a crop encodes the nodule's
size (a shortcut that crops cut from full scans do not have); with the same box for every crop, in
training and in serving alike (``normalize`` applies it to any crop, prepared or cut by the server),
that border is the same for every nodule whose VOI covers the box.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from naslung.configio import strict_from_dict


@dataclass(frozen=True)
class CropSpec:
    size: int = 32
    spacing_mm: float = 1.0
    hu_min: float = -1000.0
    hu_max: float = 400.0
    pad_hu: float = -1000.0
    fov_mm: tuple[float, float, float] | None = None  # (x, y, z) mm box kept around the centre; None = all

    def __post_init__(self) -> None:
        if self.fov_mm is not None:
            fov = tuple(float(v) for v in self.fov_mm)
            if len(fov) != 3 or not all(np.isfinite(fov)) or min(fov) <= 0:
                raise ValueError(f"crop fov_mm must be three positive sizes (x, y, z mm), got {self.fov_mm!r}")
            object.__setattr__(self, "fov_mm", fov)
        if self.size < 4:
            raise ValueError(f"crop size must be >= 4 voxels, got {self.size}")
        if not self.spacing_mm > 0:
            raise ValueError(f"crop spacing must be positive, got {self.spacing_mm}")
        if not self.hu_max > self.hu_min:
            raise ValueError(f"HU window is empty: [{self.hu_min}, {self.hu_max}]")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)

    def fov_mask(self) -> np.ndarray | None:
        """Bool (S, S, S) of the voxels inside the field-of-view box; None when there is no box."""
        if self.fov_mm is None:
            return None
        return _fov_box(self.size, self.spacing_mm, self.fov_mm)

    def apply_fov(self, hu: np.ndarray) -> np.ndarray:
        """A copy of HU crop(s) (..., S, S, S) with everything outside the box set to ``pad_hu``."""
        out = np.array(hu, copy=True)
        mask = self.fov_mask()
        if mask is not None:
            self._check_shape(out.shape)
            out[..., ~mask] = np.asarray(self.pad_hu).astype(out.dtype)
        return out

    def normalize(self, hu: np.ndarray) -> np.ndarray:
        """HU -> float32 in [0, 1] by clipping to the window, outside the field of view the padding
        value's (works on any array shape; with ``fov_mm`` the last three axes must be the crop)."""
        x = np.clip((np.asarray(hu, dtype=np.float32) - self.hu_min) / (self.hu_max - self.hu_min), 0.0, 1.0)
        mask = self.fov_mask()
        if mask is not None:
            self._check_shape(x.shape)
            x[..., ~mask] = self._pad_value()
        return x

    def normalize_torch(self, hu: "torch.Tensor") -> "torch.Tensor":
        """The same mapping as :meth:`normalize` for a tensor already on its device."""
        import torch

        x = ((hu.float() - self.hu_min) / (self.hu_max - self.hu_min)).clamp_(0.0, 1.0)
        if self.fov_mm is not None:
            self._check_shape(tuple(x.shape))
            keep = _fov_box_on(self.size, self.spacing_mm, self.fov_mm, x.device)
            x = torch.where(keep, x, torch.full((), self._pad_value(), device=x.device))
        return x

    def _pad_value(self) -> float:
        return float(np.clip((self.pad_hu - self.hu_min) / (self.hu_max - self.hu_min), 0.0, 1.0))

    def _check_shape(self, shape: Sequence[int]) -> None:
        if tuple(shape[-3:]) != self.shape:
            raise ValueError(f"a field-of-view crop spec needs crops of {self.shape}, got {tuple(shape)}")

    def describe(self) -> str:
        """One line for tables and logs."""
        fov = "none" if self.fov_mm is None else "x".join(f"{v:g}" for v in self.fov_mm) + " mm"
        return (f"{self.size}^3 at {self.spacing_mm:g} mm, HU [{self.hu_min:g}, {self.hu_max:g}], "
                f"field of view {fov}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fov_mm"] = list(self.fov_mm) if self.fov_mm is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CropSpec":
        return strict_from_dict(cls, d, "crop-spec")


def parse_fov(value: str | float | Sequence[float]) -> tuple[float, float, float]:
    """A field of view in mm as (x, y, z): one number (a cube) or three ("20,20,6")."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"field of view {value!r}: give one number or three (X,Y,Z mm)") from None
    elif isinstance(value, (int, float)):
        nums = [float(value)]
    else:
        nums = [float(v) for v in value]
    if len(nums) == 1:
        nums = nums * 3
    if len(nums) != 3 or not all(np.isfinite(nums)) or min(nums) <= 0:
        raise ValueError(f"field of view {value!r}: give one positive number or three (X,Y,Z mm)")
    return (nums[0], nums[1], nums[2])


@lru_cache(maxsize=16)
def _fov_box(size: int, spacing_mm: float, fov_xyz_mm: tuple[float, float, float]) -> np.ndarray:
    """Bool (S, S, S), axis order (z, y, x): voxels whose centre lies within the centred box."""
    offs = np.abs(np.arange(size) - size // 2) * spacing_mm
    fx, fy, fz = (float(v) / 2 + 1e-6 for v in fov_xyz_mm)
    box = (offs[:, None, None] <= fz) & (offs[None, :, None] <= fy) & (offs[None, None, :] <= fx)
    box.setflags(write=False)
    return box


@lru_cache(maxsize=16)
def _fov_box_on(size: int, spacing_mm: float, fov_xyz_mm: tuple[float, float, float], device) -> "torch.Tensor":
    """:func:`_fov_box` as a tensor on ``device``, copied there once (``normalize_torch`` runs per
    batch on the server's path, where a host-to-device copy each time would stall the stream)."""
    import torch

    return torch.from_numpy(_fov_box(size, spacing_mm, fov_xyz_mm).copy()).to(device)
