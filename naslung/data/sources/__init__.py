"""Dataset sources: each module turns one kind of CT input into a :class:`PreparedDataset`.

Every source exposes ``prepare(options: SourceOptions) -> PreparedDataset``; ``naslung prepare``
picks one by name from :data:`SOURCES` (imported lazily so that, e.g., pylidc is only needed by the
LIDC routes).
"""
from __future__ import annotations

import importlib
from typing import Callable

from naslung.data.dataset import PreparedDataset
from naslung.data.sources.base import SourceOptions

SOURCES = {
    "lidc-shapes": "naslung.data.sources.lidc_shapes",
    "lidc-dicom": "naslung.data.sources.lidc_dicom",
    "luna16": "naslung.data.sources.luna16",
    "voi": "naslung.data.sources.voi",
}


def get_source(name: str) -> Callable[[SourceOptions], PreparedDataset]:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}")
    return importlib.import_module(SOURCES[name]).prepare
