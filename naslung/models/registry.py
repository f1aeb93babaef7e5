"""Named model configs, so a person (or a test) can say ``--model small``.

* ``tiny``   -- for tests: 2 stages, a few channels, 16^3 crops, trains in seconds on CPU.
* ``small``  -- 0.25 M parameters (< 0.5 M); the default for quick real-data runs.
* ``model1`` -- Model-1-*like*: NAS-Lung reports its best single network (Model-1) at 0.14 M
  parameters but its repository publishes no widths; this 3-stage net (0.138 M parameters)
  matches that budget inside the paper's search space (widths 4..128, never narrowing).
* ``medium`` -- 1.27 M parameters: wider stages for real CT (three of them stay under 5 M).
* ``naslung-ref`` -- the widths in the default checkpoint path of NAS-Lung's test.py
  (``[[4, 8, 16, 16, 16], [32, 128], [128]]``), an example of a searched architecture.
* ``naslung-main`` -- the large hand-set network NAS-Lung's main.py trains (28.5 M parameters here).
"""
from __future__ import annotations

from naslung.models.config import ModelConfig

MODEL_REGISTRY: dict[str, ModelConfig] = {
    "tiny": ModelConfig(stages=((4,), (8,)), stem_width=4, in_size=16, name="tiny"),
    "small": ModelConfig(stages=((8, 8), (16, 16), (32, 64)), name="small"),
    "model1": ModelConfig(stages=((4, 8), (16, 16), (32, 32)), name="model1"),
    "medium": ModelConfig(stages=((16, 32), (64, 64), (128,)), stem_width=8, name="medium"),
    "naslung-ref": ModelConfig(stages=((4, 8, 16, 16, 16), (32, 128), (128,)), name="naslung-ref"),
    "naslung-main": ModelConfig(stages=((64, 64, 64), (128, 128, 256), (256, 256, 256, 512)),
                                name="naslung-main"),
}


def get_config(name: str) -> ModelConfig:
    """The registered config called ``name`` (a fresh equal object each call is not needed: frozen)."""
    try:
        return MODEL_REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_REGISTRY))}") from None


def resolve_config(name_or_path: str) -> ModelConfig:
    """A registry name, or a path to a JSON model config (search export, checkpoint JSON)."""
    if name_or_path in MODEL_REGISTRY:
        return MODEL_REGISTRY[name_or_path]
    from pathlib import Path

    if Path(name_or_path).suffix == ".json" or Path(name_or_path).exists():
        return ModelConfig.from_file(name_or_path)
    return get_config(name_or_path)
