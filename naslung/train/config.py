"""Training hyper-parameters: one dataclass, written next to every checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from naslung.configio import strict_from_dict

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("cosine", "step", "none")
SELECT_METRICS = ("auc", "accuracy", "loss")


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"           # per-epoch cosine to 0, or step decay
    step_size: int = 20                # step schedule: epochs between decays
    gamma: float = 0.1                 # step schedule: decay factor
    patience: int = 15                 # early stopping on the validation score; 0 = off
    min_epochs: int = 5                # never stop before this many epochs
    select_metric: str = "loss"        # checkpoint choice on the INNER validation split only
    seed: int = 0
    device: str = "auto"               # "auto" = cuda when available, else cpu
    amp: bool = True                   # bf16 autocast (CUDA only; ignored on CPU)
    augment: bool = True               # batched on-device augmentation (naslung.data.augment)
    augment_options: dict[str, Any] = field(default_factory=dict)  # AugmentConfig fields
    class_balanced: bool = False       # sample training batches with equal class probability
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {self.select_metric!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2 (BatchNorm), got {self.epochs}, {self.batch_size}")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return strict_from_dict(cls, d, "train-config")
