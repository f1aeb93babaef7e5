#!/usr/bin/env python3
"""Probe: cuDNN 2D convs on x-folded shapes (a 3D conv as a banded 2D conv), batch 1024, bf16.

The measurement behind ``naslung/ensemble/fold.py`` (docs/measurements/2026-11-30b/run8_fold_probe.log):
for each layer shape of the benchmark ensemble, the 2D conv cuDNN would run (with its bias and
ReLU), its TFLOP/s, our Triton kernel on a few of the same layers, and a few torch passes.

    python bench/gpu/fold_probe.py 1024
    python bench/gpu/fold_probe.py 1024 --fused   # only: cuDNN's fused conv+bias+ReLU on folded shapes
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from naslung.ensemble import kernels as K  # noqa: E402

torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 1024
print(torch.cuda.get_device_name(dev), "batch", N)


def conv2d_case(name, cin, cout, hw, k=3, stride=1, relu=True):
    x = torch.randn(N, cin, hw, hw, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, k, k, device=dev, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    b = torch.randn(cout, device=dev, dtype=torch.bfloat16)
    f = (lambda: F.conv2d(x, w, b, stride, k // 2).relu_()) if relu else (lambda: F.conv2d(x, w, b, stride, k // 2))
    ms = do_bench(f, warmup=25, rep=100, return_mode="median")
    ho = (hw + 2 * (k // 2) - k) // stride + 1
    fl = 2 * N * ho * ho * cin * cout * k * k
    out = f()
    print(f"{name:<34} conv2d {cin:>4}->{cout:<4} @{hw:>2} s{stride} k{k}: {ms:7.3f} ms  {fl / ms / 1e9:7.1f} TFLOP/s "
          f"cl_out={out.is_contiguous(memory_format=torch.channels_last)}", flush=True)
    return ms


def triton_case(name, cin, cout, s, stride=1):
    x = torch.rand(N, s + 2, s + 2, s + 2, cin, device=dev).to(torch.bfloat16)
    p = K.pack_conv(torch.randn(cout, cin, 3, 3, 3, device=dev), torch.randn(cout, device=dev), stride, 1,
                    torch.bfloat16)
    ms = do_bench(lambda: K.conv3d(x, p), warmup=25, rep=100, return_mode="median")
    print(f"{name:<34} triton {cin:>4}->{cout:<4} @{s:>2}^3 s{stride}: {ms:7.3f} ms", flush=True)


def elementwise(name, shape, fn):
    x = torch.rand(*shape, device=dev).to(torch.bfloat16)
    ms = do_bench(lambda: fn(x), warmup=25, rep=100, return_mode="median")
    print(f"{name:<34} {ms:7.3f} ms  ({x.numel() * 2 / ms / 1e6:.0f} GB/s of input)", flush=True)


def fused_case(name, c, cout, s, stride=1):
    """A folded conv on a buffer padded in x only (N, s, s, (s+2)*c), z/y padding by the conv: the plain
    conv2d (what the engine runs, then its bias/ReLU/pad pass), and cuDNN's fused conv+bias+ReLU,
    also writing (s+2)*cout channels (x border included: zero weights and bias there)."""
    img = torch.rand(N, s, s, (s + 2) * c, device=dev).to(torch.bfloat16).permute(0, 3, 1, 2)
    so = (s - 1) // stride + 1
    for wo, label in ((so, "plain"), (so + 2, "x-bordered")):
        w = torch.randn(wo * cout, (s + 2) * c, 3, 3, device=dev, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        b = torch.randn(wo * cout, device=dev, dtype=torch.bfloat16)
        t_plain = do_bench(lambda: F.conv2d(img, w, None, stride, 1), warmup=25, rep=100, return_mode="median")
        t_fused = do_bench(lambda: torch.cudnn_convolution_relu(img, w, b, [stride] * 2, [1, 1], [1, 1], 1),
                           warmup=25, rep=100, return_mode="median")
        out = torch.cudnn_convolution_relu(img, w, b, [stride] * 2, [1, 1], [1, 1], 1)
        cl = out.is_contiguous(memory_format=torch.channels_last)
        print(f"{name:<22} {label:<10} {img.shape[1]:>4}->{w.shape[0]:<4}: conv2d {t_plain:.3f} ms, "
              f"fused conv+bias+relu {t_fused:.3f} ms (out {tuple(out.shape)}, channels_last={cl})", flush=True)


if "--fused" in sys.argv:
    fused_case("stem1 4->4 @32", 4, 4, 32)
    fused_case("down 4->4 s2 @32", 4, 4, 32, stride=2)
    fused_case("16^3 4->8", 4, 8, 16)
    fused_case("16^3 4->16", 4, 16, 16)
    fused_case("16^3 8->16", 8, 16, 16)
    fused_case("16^3 16->16", 16, 16, 16)
    sys.exit(0)

triton_case("stem1 4->4 (current)", 4, 4, 32)
triton_case("s0 c2 8->8 (current)", 8, 8, 16)
triton_case("s0 c1 8->16 (current)", 8, 16, 16)
triton_case("s0 c2 16->16 (current)", 16, 16, 16)
conv2d_case("stem0 shared 1->20 (W=32)", 32, 640, 32)
conv2d_case("stem0 member 1->4", 32, 128, 32)
conv2d_case("stem1 4->4", 128, 128, 32)
conv2d_case("gate 2->1 @32", 64, 32, 32, relu=False)
conv2d_case("down 4->4 s2 @32", 128, 64, 32, stride=2)
conv2d_case("16^3 4->8", 64, 128, 16)
conv2d_case("16^3 4->16", 64, 256, 16)
conv2d_case("16^3 8->8", 128, 128, 16)
conv2d_case("16^3 8->16", 128, 256, 16)
conv2d_case("16^3 16->16", 256, 256, 16)
conv2d_case("16^3 short 4->8 1x1", 64, 128, 16, k=1)
conv2d_case("16^3 short 8->16 1x1", 128, 256, 16, k=1)
conv2d_case("gate 2->1 @16", 32, 16, 16, relu=False)
conv2d_case("down 16->16 s2 @16", 256, 128, 16, stride=2)
conv2d_case("8^3 16->32", 128, 256, 8)
conv2d_case("8^3 32->32", 256, 256, 8)
conv2d_case("4^3 32->64", 128, 256, 4)
conv2d_case("4^3 64->64", 256, 256, 4)
S = 32
elementwise("copy 32^3x4", (N, S, S, S, 4), lambda x: x.clone())
elementwise("pad 32^3x4", (N, S, S, S, 4), lambda x: F.pad(x, (0, 0, 1, 1, 1, 1, 1, 1)))
elementwise("sum+amax 32^3x4", (N, S * S * S, 4), lambda x: (x.sum(1, dtype=torch.float32), x.amax(1)))
g = torch.rand(N, 1, 4, device=dev)
elementwise("desc torch 32^3x4", (N, S * S * S, 4),
            lambda x: torch.stack([(x * g).amax(-1), (x * g).mean(-1)], -1).to(torch.bfloat16))
a = torch.rand(N, S * S * S, 1, device=dev).to(torch.bfloat16)
elementwise("apply torch 32^3x4", (N, S * S * S, 4), lambda x: x * (1 + torch.sigmoid(a)))
