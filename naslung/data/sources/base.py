"""Options shared by every dataset source."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naslung.data.spec import CropSpec


@dataclass
class SourceOptions:
    input: Path | None = None            # directory or file the source reads; None = source default
    spec: CropSpec = field(default_factory=CropSpec)
    label_rule: str | None = None        # LIDC routes: "mean" (NAS-Lung) or "median"; None = source default
    min_readers: int | None = None       # LIDC routes: drop nodules with fewer readers; None = source default
    label_column: str = "label_naslung"  # VOI route: which labels.csv column is the label
    labels_csv: Path | None = None       # LUNA16 route: the label table
    limit: int | None = None             # take only the first N items (quick runs, tests)
    progress: bool = True
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def require_input_dir(options: SourceOptions, source: str, holds: str) -> Path:
    """The source's ``--input`` directory, or an error saying what the source expects there."""
    if options.input is None:
        raise ValueError(f"--source {source} needs --input DIR (a directory of {holds})")
    root = Path(options.input)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: {source} input directory not found (expected {holds})")
    return root
