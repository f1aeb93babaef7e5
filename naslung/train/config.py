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
    # A-Softmax lambda, annealed by fraction of training (naslung.models.heads.LambdaSchedule);
    # other heads ignore it. The margin m itself is the model config's ``margin``.
    lambda_start: float = 1500.0       # lambda at step 0 (SphereFace: 1500)
    lambda_min: float = 5.0            # floor (SphereFace: 5)
    lambda_floor_at: float = 0.5       # fraction of the planned steps at which the floor is reached
    # Learning from every reader (naslung.train.targets); both need the manifest's reader ratings.
    soft_labels: float = 0.0           # weight of the reader soft label in the target (0 = hard labels)
    aux_weight: float = 0.0            # weight of the auxiliary rating-regression loss (0 = off)
    aux_targets: tuple[str, ...] = ("malignancy_mean", "spiculation", "lobulation", "margin", "sphericity",
                                    "texture", "calcification", "subtlety")

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
        self.aux_targets = tuple(str(t) for t in self.aux_targets)  # type: ignore[assignment]
        if not (self.lambda_min > 0 and self.lambda_start >= self.lambda_min):
            raise ValueError(f"need lambda_start >= lambda_min > 0, got {self.lambda_start}, {self.lambda_min}")
        if not 0 < self.lambda_floor_at <= 1:
            raise ValueError(f"lambda_floor_at must be in (0, 1], got {self.lambda_floor_at}")
        if not 0 <= self.soft_labels <= 1:
            raise ValueError(f"soft_labels is a weight in [0, 1], got {self.soft_labels}")
        if self.aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {self.aux_weight}")

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["aux_targets"] = list(self.aux_targets)
        return d

    @classmethod
    def from_file(cls, path: str, **overrides: Any) -> "TrainConfig":
        """A recipe JSON (e.g. ``examples/recipes/*.json``), with run-specific ``overrides`` such as
        ``seed`` and ``device``; a missing file or bad JSON is a clear error naming the file."""
        import json
        from pathlib import Path

        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"training recipe {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"training recipe {path} is not valid JSON: {e}") from None
        return cls.from_dict({**d, **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return strict_from_dict(cls, d, "train-config")
