"""Strict construction of config dataclasses from JSON-like dicts.

Config JSON travels between stages (dataset, search, training run, bundle); a misspelt key must
fail loudly rather than silently fall back to a default.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


def strict_from_dict(cls: type[T], d: Mapping[str, Any], what: str) -> T:
    """``cls(**d)``, refusing keys that are not fields of ``cls`` (``what`` names it in the error)."""
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} fields: {sorted(unknown)}")
    return cls(**d)
