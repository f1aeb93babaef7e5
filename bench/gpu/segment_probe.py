#!/usr/bin/env python3
"""Probe: x-folded cuDNN convs with the x axis cut into S segments (each with its own 1-voxel halo).

A folded conv reads a padded row of W + 2 voxels as (W + 2) * C channels and writes W * COUT, so
only 3 / (W + 2) of its multiply-adds are useful. Cut the row into S segments of W / S voxels,
each stored with its neighbours' edge voxels as halo, and the segments become batch entries of a
2D conv with (W / S + 2) * C input channels: S times fewer wasted FLOPs per segment, at smaller
(less efficient) channel counts. This times both sides on the benchmark's folded layers.

    python bench/gpu/segment_probe.py 1024
"""
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
print(torch.cuda.get_device_name(dev), "batch", N, "torch", torch.__version__, "cudnn",
      torch.backends.cudnn.version(), flush=True)


def case(name, cin, cout, size, stride=1):
    for s in (1, 2, 4, 8):
        xs = size // s
        if xs < 2 or (xs + 2) * cin % 8:
            continue
        wo = (xs - 1) // stride + 1
        img = torch.rand(N * s, size + 2, size + 2, (xs + 2) * cin, device=dev).to(torch.bfloat16).permute(0, 3, 1, 2)
        w = torch.randn(wo * cout, (xs + 2) * cin, 3, 3, device=dev, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        ms = do_bench(lambda: F.conv2d(img, w, None, stride, 0), warmup=25, rep=100, return_mode="median")
        useful = 2 * N * (size // stride) ** 3 * cin * cout * 27
        print(f"{name:<18} S={s} img {img.shape[1]:>3}->{w.shape[0]:<3} @{size + 2}: {ms:7.3f} ms  "
              f"useful {useful / ms / 1e9:6.1f} TFLOP/s", flush=True)


case("stem1 4->4 @32", 4, 4, 32)
case("down 4->4 s2 @32", 4, 4, 32, stride=2)
case("16^3 4->4", 4, 4, 16)
case("16^3 4->8", 4, 8, 16)
case("16^3 8->8", 8, 8, 16)
case("16^3 4->16", 4, 16, 16)
