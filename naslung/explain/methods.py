"""The four explanation methods, each for one ``nn.Module`` on one normalised crop.

* ``cbam`` - the network's own spatial attention: a forward hook on every ``spatial_gate`` reads its
  output (N, 1, d, h, w); gates of one resolution (one stage) are averaged and upsampled to the crop.
* ``gradcam`` - Captum ``LayerGradCam`` on the last stage (what the head sees), upsampled.
* ``ig`` - Captum ``IntegratedGradients`` from an all-air baseline (0 after normalisation: the value
  of padding), so "evidence" means "differs from empty lung".
* ``occlusion`` - Captum ``Occlusion`` with 3D windows filled with air: how much the target score
  drops when a cube of the crop is hidden. Default window S/4 with stride S/8 (8 mm / 4 mm on a
  32^3 crop at 1 mm): 7^3 = 343 forward passes whatever the crop size; a 4 mm window with 2 mm
  stride costs ten times that (3375 passes, minutes on a CPU).

All methods explain the target class's log-odds computed from the model's logits (its ``forward``):
unlike probabilities they do not saturate, and unlike a single raw logit they include evidence
stored in the other class's logit. Maps are returned raw; :mod:`naslung.explain.attribution`
scales them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class RawMap:
    """A method's unscaled output on the crop grid plus where it came from."""

    method: str
    layer: str
    values: np.ndarray  # float (S, S, S)
    sign: str
    info: dict
    clip_percentile: float | None = None  # for voxel-level maps dominated by a few voxels


def _upsample(t: torch.Tensor, size: tuple[int, int, int]) -> np.ndarray:
    """(1, 1, d, h, w) -> (S, S, S) numpy with trilinear interpolation (align_corners=False keeps
    each low-resolution cell centred on the block of voxels it summarises)."""
    t = t.detach().float()
    if tuple(t.shape[-3:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="trilinear", align_corners=False)
    return t[0, 0].cpu().numpy()


def _check_input(x: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[0] != 1 or x.shape[1] != 1:
        raise ValueError(f"explanations take one normalised crop of shape (1, 1, S, S, S), got {tuple(x.shape)}")


def spatial_gates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every CBAM spatial gate in forward-definition order (empty for cbam='none' models)."""
    return [(name, m) for name, m in model.named_modules() if name.split(".")[-1] == "spatial_gate"]


def cbam_maps(model: nn.Module, x: torch.Tensor) -> list[RawMap]:
    """One map per stage: the mean of that stage's spatial-attention outputs, upsampled.

    Stages are told apart by the gate output resolution (each stage halves it), which holds for
    any network built from the paper's encoding and needs no knowledge of module names.
    """
    _check_input(x)
    gates = spatial_gates(model)
    if not gates:
        return []
    seen: list[tuple[str, torch.Tensor]] = []
    handles = []
    for name, gate in gates:
        def hook(_m, _inp, out, _name=name):
            if out.ndim != 5 or out.shape[1] != 1:
                raise ValueError(f"{_name} returned shape {tuple(out.shape)}, expected (N, 1, d, h, w)")
            seen.append((_name, out.detach()))
        handles.append(gate.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    size = tuple(x.shape[-3:])
    groups: dict[tuple[int, ...], list[tuple[str, torch.Tensor]]] = {}
    for name, out in seen:
        groups.setdefault(tuple(out.shape[-3:]), []).append((name, out))
    maps = []
    for i, (res, items) in enumerate(groups.items()):
        mean = torch.stack([o[:1] for _, o in items]).mean(0)
        maps.append(RawMap("cbam", _stage_label([n for n, _ in items], i), _upsample(mean, size), "minmax",
                           {"modules": [n for n, _ in items], "resolution": list(res)}))
    return maps


def _stage_label(names: list[str], index: int) -> str:
    """"stem" / "stage1".. from NASLungNet module names, else "level<i>" by resolution order."""
    heads = {n.split(".")[0] for n in names}
    if heads == {"stem"}:
        return "stem"
    if heads == {"stages"}:
        ids = {n.split(".")[1] for n in names}
        if len(ids) == 1 and ids.pop().isdigit():
            return f"stage{int(names[0].split('.')[1]) + 1}"
    return f"level{index + 1}"


def last_stage(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer Grad-CAM reads: ``model.gradcam_layer`` if the model names one, else the last
    entry of ``model.stages``, else the last 3D convolution."""
    named = dict(model.named_modules())
    explicit = getattr(model, "gradcam_layer", None)
    if isinstance(explicit, str) and explicit in named:
        return explicit, named[explicit]
    if isinstance(explicit, nn.Module):
        for name, m in named.items():
            if m is explicit:
                return name, m
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.ModuleList, nn.Sequential)) and len(stages):
        return f"stages.{len(stages) - 1}", stages[-1]
    convs = [(n, m) for n, m in named.items() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no stages and no Conv3d layer for Grad-CAM")
    return convs[-1]


class LogOdds(nn.Module):
    """Wraps a model so output ``t`` is the log-odds of class ``t``: z_t - logsumexp(z_others).

    With two classes this is z_t - z_other = logit(p_t), the quantity the softmax decision rests on.
    Explaining the raw logit z_t alone can miss evidence a model stores in the other class's logit
    (a malignant cube may act by *lowering* the benign logit); log-odds sees both.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x).float()
        k = z.shape[1]
        eye = torch.eye(k, dtype=torch.bool, device=z.device)
        others = z[:, None, :].expand(-1, k, -1).masked_fill(eye, float("-inf"))
        return z - torch.logsumexp(others, dim=2)


def _forward_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return LogOdds(model)


def gradcam_map(model: nn.Module, x: torch.Tensor, target: int, layer_name: str | None = None) -> RawMap:
    """Grad-CAM on ``layer_name`` (a module name such as "stages.0"), by default the last stage."""
    from captum.attr import LayerGradCam

    _check_input(x)
    if layer_name:
        named = dict(model.named_modules())
        if layer_name not in named:
            raise ValueError(f"Grad-CAM layer {layer_name!r} is not a module of {type(model).__name__}; "
                             f"try one of: {', '.join(n for n in named if n.count('.') <= 1 and n)}")
        name, layer = layer_name, named[layer_name]
    else:
        name, layer = last_stage(model)
    gc = LayerGradCam(_forward_fn(model), layer)
    attr = gc.attribute(x, target=target, relu_attributions=False)
    if attr.ndim != 5:
        raise ValueError(f"Grad-CAM on {name} gave shape {tuple(attr.shape)}; expected a 3D feature map")
    return RawMap("gradcam", name, _upsample(attr, tuple(x.shape[-3:])), "positive",
                  {"resolution": list(attr.shape[-3:])})


def ig_map(model: nn.Module, x: torch.Tensor, target: int, n_steps: int = 32,
           internal_batch_size: int = 8) -> RawMap:
    from captum.attr import IntegratedGradients

    _check_input(x)
    ig = IntegratedGradients(_forward_fn(model))
    attr, delta = ig.attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=n_steps,
                               internal_batch_size=internal_batch_size, return_convergence_delta=True)
    return RawMap("ig", "input", attr[0, 0].detach().cpu().numpy(), "positive",
                  {"n_steps": n_steps, "baseline": "air (0)", "convergence_delta": float(delta.abs().max())}, clip_percentile=99.5)


def occlusion_map(model: nn.Module, x: torch.Tensor, target: int, window: int | None = None,
                  stride: int | None = None, batch: int = 32) -> RawMap:
    from captum.attr import Occlusion

    _check_input(x)
    size = x.shape[-1]
    window = window or max(2, size // 4)
    stride = stride or max(1, window // 2)
    if not 1 <= window <= size:
        raise ValueError(f"occlusion window {window} does not fit a {size}^3 crop")
    occ = Occlusion(_forward_fn(model))
    with torch.no_grad():
        attr = occ.attribute(x, sliding_window_shapes=(1, window, window, window),
                             strides=(1, stride, stride, stride), baselines=0.0, target=target,
                             perturbations_per_eval=batch)
    return RawMap("occlusion", "input", attr[0, 0].detach().cpu().numpy(), "positive",
                  {"window": window, "stride": stride, "baseline": "air (0)"})
