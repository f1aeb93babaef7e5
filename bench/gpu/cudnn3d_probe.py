#!/usr/bin/env python3
"""Probe: cuDNN's own 3D convs on the engine's padded buffers (padding 0, channels_last_3d view),
against the engine's way for each layer shape of the benchmark ensemble, batch 1024; and the
stem's folded conv with and without the x border in the channels (136 vs 128 input channels).

    python bench/gpu/cudnn3d_probe.py 1024
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from naslung.ensemble import fold  # noqa: E402
from naslung.ensemble import kernels as K  # noqa: E402

torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
dt = torch.bfloat16
print(torch.cuda.get_device_name(dev), "batch", N, "torch", torch.__version__, "cudnn", torch.backends.cudnn.version(),
      flush=True)


def ms(fn):
    return float(do_bench(fn, warmup=10, rep=50, return_mode="median"))


def padded(c, s):
    return K.bias_act_pad(torch.rand(N, s, s, s, c, device=dev, dtype=dt), None, relu=False)


def layer(name, cin, cout, s, stride=1):
    h = padded(cin, s)
    w, b = torch.randn(cout, cin, 3, 3, 3, device=dev) * 0.2, torch.randn(cout, device=dev)
    view = h.permute(0, 4, 1, 2, 3)  # NCDHW shape, channels_last_3d strides (no copy)
    w3 = w.to(dt).contiguous(memory_format=torch.channels_last_3d)
    t_c3 = ms(lambda: F.conv3d(view, w3, None, stride, 0))
    y = F.conv3d(view, w3, None, stride, 0)
    cl = y.is_contiguous(memory_format=torch.channels_last_3d)
    t_c3p = ms(lambda: K.bias_act_pad(F.conv3d(view, w3, None, stride, 0).permute(0, 2, 3, 4, 1), b))
    fc = fold.pack_folded(w, b, stride, 1, dt)
    t_fold = ms(lambda: K.bias_act_pad(fold.folded_conv(h, fc), fc.bias))
    res = [f"cudnn3d {t_c3:.3f} (+pass {t_c3p:.3f}, out channels_last_3d={cl})", f"fold+pass {t_fold:.3f}"]
    if stride == 1:
        p1 = K.pack_conv(w, b, 1, 1, dt)
        res.append(f"one-voxel {ms(lambda: K.conv3d(h, p1)):.3f}")
        p2 = K.pack_conv(w, b, 1, 1, dt, xb=2)
        res.append(f"xrun2 {ms(lambda: K.conv3d(h, p2)):.3f}")
    print(f"{name:<18} " + " | ".join(res), flush=True)


def stem_fold_borders():
    w = torch.randn(4, 4, 3, 3, 3, device=dev)
    fc = fold.pack_folded(w, None, 1, 1, dt)
    for xb in (1, 0):
        h = torch.rand(N, 34, 34, 32 + 2 * xb, 4, device=dev).to(dt)
        print(f"stem1 fold, x border {xb}: {ms(lambda: fold.folded_conv(h, fc, x_border=xb)):.3f} ms "
              f"({(32 + 2 * xb) * 4} input channels)", flush=True)


stem_fold_borders()
layer("4->4 @32", 4, 4, 32)
layer("4->4 s2 @32", 4, 4, 32, 2)
layer("4->8 @16", 4, 8, 16)
layer("8->8 @16", 8, 8, 16)
layer("4->16 @16", 4, 16, 16)
layer("8->16 @16", 8, 16, 16)
layer("16->16 @16", 16, 16, 16)
layer("16->16 s2 @16", 16, 16, 16, 2)
layer("16->32 @8", 16, 32, 8)
layer("32->32 @8", 32, 32, 8)
layer("32->64 @4", 32, 64, 4)
layer("64->64 @4", 64, 64, 4)
layer("128->128 @4", 128, 128, 4)
