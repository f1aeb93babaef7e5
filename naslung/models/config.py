"""The model config: the paper's stage encoding plus the choices it fixed (head, CBAM variant).

The same JSON appears in a search result, a training run and a bundle::

    {"stages": [[16, 16], [32, 32, 32], [64]], "head": "asoftmax", "cbam": "naslung", ...}
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from naslung.configio import strict_from_dict

HEADS = ("asoftmax", "softmax", "amsoftmax")
CBAM_VARIANTS = ("naslung", "naslung-exact", "original", "none")
WIDTHS = (4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ModelConfig:
    stages: tuple[tuple[int, ...], ...]
    head: str = "asoftmax"
    cbam: str = "naslung"
    stem_width: int = 4
    in_size: int = 32
    num_classes: int = 2
    margin: float | None = None  # head-specific: A-Softmax m (int), AM-Softmax m; None = head default
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    scale: float | None = None  # AM-Softmax scale s; None = head default (30)

    def __post_init__(self) -> None:
        stages = tuple(tuple(int(w) for w in s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages or any(len(s) == 0 for s in stages):
            raise ValueError(f"every stage needs at least one block: {stages}")
        if any(w <= 0 for s in stages for w in s):
            raise ValueError(f"block widths must be positive: {stages}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.cbam not in CBAM_VARIANTS:
            raise ValueError(f"cbam must be one of {CBAM_VARIANTS}, got {self.cbam!r}")
        if self.in_size % (2 ** len(stages)) != 0:
            raise ValueError(f"input size {self.in_size} is not divisible by 2^{len(stages)} stages")

    @property
    def n_blocks(self) -> int:
        return sum(len(s) for s in self.stages)

    @property
    def key(self) -> str:
        """A compact architecture id such as ``16-16_32-32-32_64|asoftmax|naslung``."""
        arch = "_".join("-".join(str(w) for w in s) for s in self.stages)
        return f"{arch}|{self.head}|{self.cbam}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = [list(s) for s in self.stages]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        return strict_from_dict(cls, d, "model-config")

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model config {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"model config {path} is not valid JSON: {e}") from None
        # A search export or a checkpoint JSON may wrap the config.
        if "stages" not in data and "model" in data:
            data = data["model"]
        return cls.from_dict(data)
