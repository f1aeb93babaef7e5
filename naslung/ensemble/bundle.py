"""The bundle directory: a versioned, checksummed, pickle-free ensemble on disk.

Layout::

    BUNDLE/manifest.json                 what a person (and the server) reads first
    BUNDLE/members/00-<name>.safetensors one weight file per member (tensors only, no code)

``manifest.json`` holds the format version, the crop spec and input spec (size, spacing, HU window,
normalisation), each member's model config, metrics and the SHA-256 and size of its weight file,
the combination rule with its weights, the training-data fingerprint, and ``content_sha256`` -- a
hash of the manifest itself -- so that an edited config is caught as surely as an edited weight.
Loading verifies every weight file's hash on the bytes it then decodes (read once), and reads weights with safetensors:
nothing in a bundle is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from naslung.data.spec import CropSpec
from naslung.ensemble.rules import RULES, check_weights
from naslung.hashing import sha256_file
from naslung.models.config import ModelConfig

log = logging.getLogger(__name__)

FORMAT = "naslung-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CLASSES = ("benign", "malignant")


class BundleError(ValueError):
    """A bundle is missing, malformed, tampered with or incompatible (message names file and cause)."""


@dataclass
class BundleMember:
    """One trained network going into a bundle."""

    name: str
    config: ModelConfig
    state_dict: Mapping[str, Any]  # name -> torch.Tensor
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"val": {...}, "test": {...}}
    info: dict[str, Any] = field(default_factory=dict)  # provenance: search trial, fold, epochs...


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """Hash of the manifest without its own ``content_sha256`` field (canonical JSON)."""
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "content_sha256"})).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "member"


def input_spec(spec: CropSpec) -> dict[str, Any]:
    """What a client must send: shape, dtype, layout and the exact HU -> input mapping."""
    return {
        "shape": [1, spec.size, spec.size, spec.size],
        "layout": "NCDHW, spatial axis order z, y, x",
        "dtype": "float32",
        "spacing_mm": spec.spacing_mm,
        "normalization": {"kind": "hu_window_clip", "hu_min": spec.hu_min, "hu_max": spec.hu_max,
                          "formula": "clip((hu - hu_min) / (hu_max - hu_min), 0, 1)"},
        "pad_hu": spec.pad_hu,
    }


def save_bundle(out_dir: str | Path, members: Sequence[BundleMember], spec: CropSpec, rule: str = "mean",
                weights: Sequence[float] | None = None, *, version: str | None = None,
                training_data: Mapping[str, Any] | None = None, training: Mapping[str, Any] | None = None,
                notes: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a bundle atomically (a temp dir renamed into place) and return its path.

    ``weights`` is required for ``rule="weighted"`` and recorded for the others when given.
    ``version`` defaults to a 12-hex content id (member hashes + configs + rule + spec), so the
    same models always get the same version and different ones never share it.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    if not members:
        raise BundleError("a bundle needs at least one member")
    if rule not in RULES:
        raise BundleError(f"unknown combination rule {rule!r}; choose one of {RULES}")
    if rule == "weighted" and weights is None:
        raise BundleError("rule 'weighted' needs weights")
    w = check_weights(weights, len(members)).tolist() if weights is not None else None
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise BundleError(f"member names must be unique, got {names}")
    for m in members:
        if m.config.in_size != spec.size:
            raise BundleError(f"member {m.name!r} expects {m.config.in_size}^3 input but the crop spec "
                              f"is {spec.size}^3")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} already exists and is not empty (pass overwrite=True / --force)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "members").mkdir()
        entries = []
        for i, m in enumerate(members):
            rel = f"members/{i:02d}-{_slug(m.name)}.safetensors"
            tensors = {k: v.detach().cpu().contiguous().clone() for k, v in m.state_dict.items()}
            # One metadata key: safetensors orders several keys arbitrarily, which would change the hash.
            meta = json.dumps({"name": m.name, "config": m.config.to_dict()}, sort_keys=True)
            save_file(tensors, str(tmp / rel), metadata={"naslung": meta})
            entries.append({
                "name": m.name,
                "config": m.config.to_dict(),
                "weights_file": rel,
                "sha256": sha256_file(tmp / rel),
                "bytes": (tmp / rel).stat().st_size,
                "n_tensors": len(tensors),
                "metrics": m.metrics,
                "info": m.info,
            })
        identity = {"members": [(e["sha256"], e["config"]) for e in entries], "rule": rule, "weights": w,
                    "spec": spec.to_dict()}
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version or hashlib.sha256(_canonical(identity)).hexdigest()[:12],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "naslung_version": _naslung_version(),
            "crop_spec": spec.to_dict(),
            "input": input_spec(spec),
            "output": {"classes": list(CLASSES), "shape": ["N", 2],
                       "meaning": "probabilities per class after the combination rule"},
            "rule": {"name": rule, "weights": w},
            "members": entries,
            "training_data": dict(training_data or {}),
            "training": dict(training or {}),
            "notes": dict(notes or {}),
        }
        manifest["content_sha256"] = manifest_sha256(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        _chmod_like_mkdir(tmp)  # mkdtemp made it 0700; a bundle is meant to be read by a server's user
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (version %s, %d members, rule %s)", out, manifest["version"], len(members), rule)
    return out


def _chmod_like_mkdir(directory: Path) -> None:
    """Give ``directory`` the mode a plain mkdir would (0777 minus the umask), as mkdtemp does not."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)


def _naslung_version() -> str:
    try:
        import naslung

        return naslung.__version__
    except Exception:  # pragma: no cover - version is informational only
        return "unknown"


def read_manifest(bundle_dir: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Parse and validate ``manifest.json``; with ``verify`` also check every file's SHA-256."""
    root = Path(bundle_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a directory")
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a NASLung bundle manifest (format != {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('format_version')} is not supported "
                          f"(this NASLung reads version {FORMAT_VERSION})")
    for key in ("version", "crop_spec", "rule", "members", "content_sha256"):
        if key not in manifest:
            raise BundleError(f"{path}: required field {key!r} is missing")
    if manifest_sha256(manifest) != manifest["content_sha256"]:
        raise BundleError(f"{path}: manifest content hash does not match content_sha256 -- the manifest was "
                          f"edited after the bundle was written; rebuild the bundle instead")
    members = manifest["members"]
    if not isinstance(members, list) or not members:
        raise BundleError(f"{path}: 'members' must be a non-empty list")
    rule = manifest["rule"]
    if rule.get("name") not in RULES:
        raise BundleError(f"{path}: unknown combination rule {rule.get('name')!r}")
    if rule.get("weights") is not None:
        try:
            check_weights(rule["weights"], len(members))
        except ValueError as e:
            raise BundleError(f"{path}: rule weights invalid: {e}") from None
    elif rule["name"] == "weighted":
        raise BundleError(f"{path}: rule 'weighted' without weights")
    for m in members:
        rel = str(m.get("weights_file", ""))
        target = _inside(root, rel, m.get("name"))
        if not target.is_file():
            raise BundleError(f"bundle {root}: weight file {rel} of member {m.get('name')!r} is missing")
        if verify:
            digest = sha256_file(target)
            if digest != m.get("sha256"):
                raise BundleError(f"bundle {root}: checksum mismatch for {rel} (member {m.get('name')!r}): "
                                  f"manifest says {m.get('sha256')}, file has {digest}; the file was modified "
                                  f"or corrupted -- refusing to load it")
    return manifest


def load_member_weights(bundle_dir: str | Path, member: Mapping[str, Any], device: str = "cpu", *,
                        verify: bool = True) -> dict:
    """Tensors of one member, read with safetensors (no pickle). Call after :func:`read_manifest`.

    The file is read into memory once; with ``verify`` the SHA-256 is taken of *those bytes* and the
    tensors are decoded from the same bytes. Hashing the file and then opening it again would let a
    file swapped in between (a concurrent copy, a hostile writer) be loaded as if it were verified.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    root = Path(bundle_dir)
    rel = str(member.get("weights_file", ""))
    path = _inside(root, rel, member.get("name"))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BundleError(f"bundle {bundle_dir}: cannot read {rel}: {e}") from None
    if verify:
        digest = hashlib.sha256(data).hexdigest()
        if digest != member.get("sha256"):
            raise BundleError(f"bundle {root}: checksum mismatch for {rel} (member {member.get('name')!r}): "
                              f"manifest says {member.get('sha256')}, file has {digest}; the file was modified "
                              f"or corrupted -- refusing to load it")
    try:
        tensors = load_bytes(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle {bundle_dir}: cannot read {rel}: {e}") from None
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors


def _inside(root: Path, rel: str, name: Any) -> Path:
    """``root / rel`` if ``rel`` is a relative path that stays inside ``root``; else BundleError."""
    target = (root / rel).resolve()
    if not rel or Path(rel).is_absolute() or root.resolve() not in target.parents:
        raise BundleError(f"{root / MANIFEST}: member {name!r} has an invalid weights_file {rel!r} "
                          f"(must be a relative path inside the bundle)")
    return target


def load_bundle(bundle_dir: str | Path, device: str = "cpu", *, verify: bool = True) -> "Ensemble":
    """Verify and load a bundle into an :class:`~naslung.ensemble.naive.Ensemble` in eval mode."""
    from naslung.ensemble.naive import Ensemble
    from naslung.models import build_model

    root = Path(bundle_dir)
    # Structure and manifest hash here; each weight file is hashed below on the very bytes it is
    # decoded from (load_member_weights), never hashed on disk and then re-opened.
    manifest = read_manifest(root, verify=False)
    spec = CropSpec.from_dict(manifest["crop_spec"])
    models, names, configs = [], [], []
    for m in manifest["members"]:
        try:
            cfg = ModelConfig.from_dict(m["config"])
        except (TypeError, ValueError) as e:
            raise BundleError(f"bundle {root}: member {m.get('name')!r} has an invalid config: {e}") from None
        model = build_model(cfg)
        state = load_member_weights(root, m, verify=verify)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BundleError(f"bundle {root}: weights in {m['weights_file']} do not fit member "
                              f"{m['name']!r}'s config: {e}") from None
        models.append(model.to(device).eval())
        names.append(m["name"])
        configs.append(cfg)
    return Ensemble(models, names=names, configs=configs, spec=spec, rule=manifest["rule"]["name"],
                    weights=manifest["rule"].get("weights"), manifest=manifest, root=root)


SHIPPED_BUNDLE = "lidc-voi-ensemble"


def default_bundle() -> Path:
    """The bundle used when a command is given no ``--bundle``: ``$NASLUNG_BUNDLE`` if set, else the
    shipped ``models/lidc-voi-ensemble`` of this checkout (see its REPORT.md).

    Raises:
        FileNotFoundError: when neither exists (an install without the repository's models/).
    """
    import os

    env = os.environ.get("NASLUNG_BUNDLE")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "models" / SHIPPED_BUNDLE
    if not (path / "manifest.json").is_file():
        where = "$NASLUNG_BUNDLE" if env else "the shipped models/ directory"
        raise FileNotFoundError(f"no --bundle given and no bundle at {path} ({where}); pass --bundle DIR")
    return path
