"""The whole prepared dataset on the training device, normalised once.

A 2-core machine cannot feed a GPU through a DataLoader; instead every crop goes to the device a
single time (uploaded as int16 HU, normalised there with ``CropSpec.normalize_torch``) and batches
are index gathers. 1000 crops of 32^3 float32 are 131 MB, far below any GPU's memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from naslung.data.spec import CropSpec


@dataclass
class DeviceData:
    x: torch.Tensor  # (N, 1, S, S, S) float32, normalised, on device
    y: torch.Tensor  # (N,) int64 on device
    spec: CropSpec
    rows: list = field(default_factory=list)  # manifest rows (reader ratings: naslung.train.targets)

    @classmethod
    def from_arrays(cls, crops_hu: np.ndarray, labels: np.ndarray, spec: CropSpec,
                    device: str | torch.device = "cpu") -> "DeviceData":
        hu = torch.from_numpy(np.ascontiguousarray(crops_hu, dtype=np.int16)).to(device)
        x = spec.normalize_torch(hu).unsqueeze(1)
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
        return cls(x, y, spec)

    @classmethod
    def from_dataset(cls, ds, device: str | torch.device = "cpu") -> "DeviceData":
        """From a :class:`naslung.data.dataset.PreparedDataset`, with its manifest rows (the readers'
        ratings, when it has them)."""
        data = cls.from_arrays(ds.crops, ds.labels, ds.spec, device)
        data.rows = list(ds.rows)
        return data

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __len__(self) -> int:
        return int(self.y.shape[0])
