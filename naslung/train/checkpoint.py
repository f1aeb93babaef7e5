"""Checkpoints: weights (safetensors, or a torch state_dict read with ``weights_only=True``) plus
``checkpoint.json`` with the model config, metrics and the weights' SHA-256. Never pickled modules.

Layout of a checkpoint directory::

    DIR/model.safetensors   (or DIR/model.pt when safetensors is not installed)
    DIR/checkpoint.json     {"format_version", "model": ModelConfig, "metrics", "weights",
                             "weights_sha256", "extra"}
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from naslung.hashing import sha256_file
from naslung.models.config import ModelConfig
from naslung.train.metrics import json_safe

FORMAT_VERSION = 1
META = "checkpoint.json"


@dataclass
class Checkpoint:
    model_cfg: ModelConfig
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network with these weights, in eval mode on ``device``."""
        from naslung.models import build_model

        model = build_model(self.model_cfg)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def save_checkpoint(directory: str | Path, model_cfg: ModelConfig, state_dict: dict[str, torch.Tensor],
                    metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write weights + JSON into ``directory`` (created); returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    try:
        from safetensors.torch import save_file
    except ImportError:  # the GPU box may lack safetensors: fall back to a plain state_dict
        weights = directory / "model.pt"
        torch.save(tensors, weights)
    else:
        weights = directory / "model.safetensors"
        save_file(tensors, str(weights), metadata={"format": "pt"})
    meta = {
        "format_version": FORMAT_VERSION,
        "model": model_cfg.to_dict(),
        "metrics": json_safe(metrics),
        "weights": weights.name,
        "weights_sha256": sha256_file(weights),
        "extra": json_safe(extra or {}),
    }
    (directory / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def _inside(directory: Path, rel: Any, meta_path: Path) -> Path:
    """The weights path named by ``checkpoint.json``: a plain relative path inside the checkpoint
    directory (as bundles require), never an absolute path or one that climbs out with ``..``."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        raise ValueError(f"{meta_path}: weights {rel!r} must be a relative file name inside {directory}")
    target = (directory / rel).resolve()
    if directory.resolve() not in target.parents:
        raise ValueError(f"{meta_path}: weights {rel!r} points outside the checkpoint directory {directory}")
    return target


def load_checkpoint(directory: str | Path, verify: bool = True) -> Checkpoint:
    """Read a checkpoint directory; checks the weights' SHA-256 unless ``verify=False``."""
    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{directory}: not a checkpoint ({META} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_path}: not valid JSON: {e}") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_path}: checkpoint format {meta.get('format_version')} not supported")
    rel = meta.get("weights")
    weights = _inside(directory, rel, meta_path)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: weight file named in {meta_path} is missing")
    # Read once; hash and decode the same bytes (hashing the file and then re-opening it would
    # load whatever was swapped in between).
    data = weights.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise ValueError(f"{weights}: SHA-256 does not match {meta_path} (file changed or corrupt)")
    if weights.suffix == ".safetensors":
        from safetensors.torch import load as load_bytes

        state = load_bytes(data)
    else:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return Checkpoint(ModelConfig.from_dict(meta["model"]), state, meta.get("metrics", {}),
                      meta.get("extra", {}), directory)
