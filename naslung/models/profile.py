"""Cost of a config: parameters, multiply-accumulates (forward hooks, no extra deps), latency.

``flops`` follows the NAS convention of counting one multiply-accumulate as 2 FLOPs; ``macs`` is
also returned. Only convolutions, linear layers and the cosine heads are counted (BN, ReLU,
pooling and attention element-wise ops are small in comparison and left out).
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from naslung.models.config import ModelConfig
from naslung.models.heads import _CosineHead


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: int | tuple[int, int, int], device: str | torch.device = "cpu") -> int:
    """Multiply-accumulates of one forward pass for ONE crop of ``input_size``."""
    size = (input_size,) * 3 if isinstance(input_size, int) else tuple(input_size)
    total = [0]

    def conv_hook(m: nn.Conv3d, inp, out) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * m.kernel_size[2]
        total[0] += out[0].numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Linear, inp, out) -> None:
        total[0] += m.in_features * m.out_features

    def cosine_hook(m: _CosineHead, inp, out) -> None:
        total[0] += m.weight.numel()

    handles = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv3d):
            handles.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(linear_hook))
        elif isinstance(mod, _CosineHead):
            handles.append(mod.register_forward_hook(cosine_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros((1, 1) + size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total[0])


def measure_latency(model: nn.Module, input_size: int, device: str | torch.device = "cpu",
                    batch_size: int = 1, warmup: int = 5, repeats: int = 20) -> float:
    """Median wall time (ms) of one inference forward, after warm-up; CUDA-synchronised."""
    device = torch.device(device)
    x = torch.randn(batch_size, 1, input_size, input_size, input_size, device=device)
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def profile_model(cfg: ModelConfig, device: str | torch.device = "cpu", input_size: int | None = None,
                  batch_size: int = 1, warmup: int = 5, repeats: int = 20) -> dict[str, Any]:
    """params, macs, flops (= 2 macs) per crop, and median latency_ms for ``batch_size`` crops."""
    from naslung.models.network import build_model

    size = int(input_size or cfg.in_size)
    model = build_model(cfg).to(device)
    macs = count_macs(model, size, device)
    return {
        "params": count_params(model),
        "macs": macs,
        "flops": 2 * macs,
        "latency_ms": measure_latency(model, size, device, batch_size, warmup, repeats),
        "input_size": size,
        "batch_size": batch_size,
        "device": str(device),
    }
