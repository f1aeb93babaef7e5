"""Triton kernels for the fast engine: 3D convolutions and the CBAM spatial gate on padded NDHWC.

Why: cuDNN's 3D kernels run the 1-16-channel convolutions of these networks at a few percent of
the memory floor (a 4->4 conv on 1024 crops of 32^3 took ~10 ms on an H100), and those small
layers are most of a member's time. Both kernels here are memory-bound by design.

**Layout.** Every activation is a channels-last buffer ``(N, D+2, H+2, W+2, C)`` whose one-voxel
border is zero -- the zero padding of the next 3x3x3 conv is already in memory, so the kernels
need no per-tap bounds checks. Each kernel writes the *whole* padded output, border zeros
included, so no buffer ever needs clearing.

**Convolution** (:func:`conv3d`) is an implicit GEMM: a tile of ``BM`` output voxels times
``BN`` output channels, the reduction axis ``k = tap * CIN_PAD + ci`` walked in chunks of ``KB``
(several taps per chunk when there are few channels), one ``tl.dot`` per chunk with fp32
accumulation. The epilogue adds the folded-BN bias, applies ReLU and adds a residual -- so a
residual block ``relu(conv2) + relu(shortcut)`` is two launches and no extra pass.

**CBAM spatial gate** (:func:`cbam_spatial`): for each output voxel, max and mean over channels of
the channel-gated input at every tap of the gate's kernel, the gate conv, the sigmoid, and the
block's output (``s * x + x`` for NAS-Lung's CBAM, ``s * g * x`` for the original) in one pass.

The same kernels run on CPU under Triton's interpreter (``TRITON_INTERPRET=1``, fp32), which is
how the test suite checks them without a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


# ----------------------------------------------------------------------------- tiling
# Both kernels tile the output by *lines*: a program owns LPB consecutive padded (n, z, y) lines
# and, within each, the WO2 (power of two >= W) interior x positions, so a tap's loads over a
# tile are runs of consecutive voxels (coalesced, and vectorised along x when the channel count
# is 1). Border lines are written as zeros; each line's two x-border voxels too.
@triton.jit
def _line_rows(pid, NLINES, DOP: tl.constexpr, HOP: tl.constexpr, WOP: tl.constexpr, WO2: tl.constexpr,
               LPB: tl.constexpr):
    i = tl.arange(0, LPB * WO2)
    xo = i % WO2
    line = pid * LPB + i // WO2
    yp = line % HOP
    t = line // HOP
    zp = t % DOP
    n = (t // DOP).to(tl.int64)
    line_ok = line < NLINES
    inside = line_ok & (yp >= 1) & (yp < HOP - 1) & (zp >= 1) & (zp < DOP - 1)
    store_ok = line_ok
    if WO2 != WOP - 2:
        inside = inside & (xo < WOP - 2)
        store_ok = store_ok & (xo < WOP - 2)
    out_vox = line.to(tl.int64) * WOP + xo + 1
    return xo, yp, zp, n, inside, store_ok, out_vox


@triton.jit
def _zero_x_borders(out_ptr, pid, NLINES, WOP: tl.constexpr, LPB: tl.constexpr, C: tl.constexpr, CB: tl.constexpr,
                    c0):
    lines = pid * LPB + tl.arange(0, LPB)
    cc = c0 + tl.arange(0, CB)
    ok = (lines < NLINES)[:, None] & (cc < C)[None, :]
    first = (lines.to(tl.int64) * WOP)[:, None] * C + cc[None, :]
    zero = tl.zeros((LPB, CB), dtype=out_ptr.dtype.element_ty)
    tl.store(out_ptr + first, zero, mask=ok)
    tl.store(out_ptr + first + (WOP - 1) * C, zero, mask=ok)


def _tiling(out_w: int, block_m: int) -> tuple[int, int]:
    wo2 = triton.next_power_of_2(out_w)
    return wo2, max(1, block_m // wo2)


# ----------------------------------------------------------------------------- convolution
@triton.jit
def _conv3d_kernel(x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, NLINES,
                   DOP: tl.constexpr, HOP: tl.constexpr, WOP: tl.constexpr,
                   DIP: tl.constexpr, HIP: tl.constexpr, WIP: tl.constexpr,
                   XC: tl.constexpr, XOFF: tl.constexpr,
                   CIN: tl.constexpr, COUT: tl.constexpr, CIN_PAD: tl.constexpr, WCOLS: tl.constexpr,
                   STRIDE: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr,
                   KB: tl.constexpr, NCHUNK: tl.constexpr, WO2: tl.constexpr, LPB: tl.constexpr,
                   BN: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DOP, HOP, WOP, WO2, LPB)
    # first tap of each output voxel's window, in the padded input's coordinates
    zs = (zp - 1) * STRIDE + 1 - PAD
    ys = (yp - 1) * STRIDE + 1 - PAD
    xs = xo * STRIDE + 1 - PAD
    base = (((n * DIP + zs) * HIP + ys) * WIP + xs) * XC + XOFF
    cols = tl.arange(0, KB)
    co = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros((LPB * WO2, BN), dtype=tl.float32)
    for c in range(NCHUNK):
        k = c * KB + cols
        tap = k // CIN_PAD
        ci = k % CIN_PAD
        dz = tap // (KS * KS)
        dy = (tap // KS) % KS
        dx = tap % KS
        col_off = ((dz * HIP + dy) * WIP + dx) * XC + ci
        mask = inside[:, None]
        if CIN != CIN_PAD:  # only then can a column be a padding channel (keeps loads vectorisable)
            mask = mask & (ci < CIN)[None, :]
        if NCHUNK * KB > KS * KS * KS * CIN_PAD:
            mask = mask & (tap < KS * KS * KS)[None, :]
        a = tl.load(x_ptr + base[:, None] + col_off[None, :], mask=mask, other=0.0)
        w = tl.load(w_ptr + k[:, None] * WCOLS + co[None, :])
        acc += tl.dot(a, w)
    acc += tl.load(b_ptr + co)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out_off = out_vox[:, None] * COUT + co[None, :]
    out_ok = store_ok[:, None] & (co < COUT)[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=out_ok & inside[:, None], other=0.0).to(tl.float32)
    acc = tl.where(inside[:, None], acc, 0.0)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
    _zero_x_borders(out_ptr, pid, NLINES, WOP, LPB, COUT, BN, pid_n * BN)


@dataclass
class PackedConv:
    """A (BN-folded) Conv3d's weights laid out for :func:`conv3d`: rows ``tap * cin_pad + ci``."""

    weight: torch.Tensor  # (nchunk * kb, wcols), zero rows/columns where padded
    bias: torch.Tensor  # (wcols,) fp32
    cin: int
    cout: int
    ks: int
    stride: int
    pad: int
    cin_pad: int
    kb: int
    nchunk: int
    bn: int


def pack_conv(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
              dtype: torch.dtype, kb: int | None = None) -> PackedConv:
    """Pack a cubic-kernel conv ``weight`` (COUT, CIN, k, k, k) for :func:`conv3d`.

    ``kb``: reduction chunk (a power of two >= 16); by default 128 for 4 channels, 32 for 1, 2 and 8
    (several taps per chunk), else min(64, channels) -- the fastest of 16..128 measured on an
    H200 (docs/benchmarks.md).
    """
    cout, cin, kd, kh, kw = weight.shape
    if not kd == kh == kw or kd % 2 == 0 or padding != kd // 2 or padding > 1:
        raise ValueError(f"conv3d kernel supports 1x1x1 and 3x3x3 'same'-padded kernels, got {tuple(weight.shape)} "
                         f"padding {padding}")
    ks = kd
    cin_pad = triton.next_power_of_2(cin)
    if kb is None:
        if cin_pad >= 16:
            kb = min(64, cin_pad)
        else:
            kb = max(16, min(128 if cin_pad == 4 else 32, triton.next_power_of_2(ks ** 3 * cin_pad)))
    if kb < 16 or kb & (kb - 1):
        raise ValueError(f"kb must be a power of two >= 16, got {kb}")
    k_total = ks ** 3 * cin_pad
    nchunk = math.ceil(k_total / kb)
    bn = min(128, max(16, triton.next_power_of_2(cout)))
    wcols = math.ceil(cout / bn) * bn
    w = torch.zeros(nchunk * kb, wcols, dtype=torch.float32, device=weight.device)
    # (COUT, CIN, kz, ky, kx) -> (tap, CIN, COUT) with tap = (kz * k + ky) * k + kx
    wt = weight.detach().float().permute(2, 3, 4, 1, 0).reshape(ks ** 3, cin, cout)
    view = w[:k_total].view(ks ** 3, cin_pad, wcols)
    view[:, :cin, :cout] = wt
    b = torch.zeros(wcols, dtype=torch.float32, device=weight.device)
    if bias is not None:
        b[:cout] = bias.detach().float()
    return PackedConv(w.to(dtype).contiguous(), b, cin, cout, ks, stride, padding, cin_pad, kb, nchunk, bn)


def conv3d(x: torch.Tensor, p: PackedConv, *, relu: bool = True, residual: torch.Tensor | None = None,
           cin_offset: int = 0, block_m: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """Conv of a padded NDHWC buffer -> padded NDHWC buffer (bias, ReLU, + residual fused).

    ``cin_offset``: read input channels ``[cin_offset, cin_offset + p.cin)`` of ``x`` (several
    members' stems share one buffer). ``block_m``: output voxels per program (default 256 for
    rows of 32 or more voxels, else 128: the H200 sweep's best).
    """
    n, dip, hip, wip, xc = x.shape
    if cin_offset < 0 or cin_offset + p.cin > xc:
        raise ValueError(f"conv reads channels {cin_offset}..{cin_offset + p.cin - 1}, input has {xc}")
    d, h, w = dip - 2, hip - 2, wip - 2
    do, ho, wo = ((s + 2 * p.pad - p.ks) // p.stride + 1 for s in (d, h, w))
    out = torch.empty((n, do + 2, ho + 2, wo + 2, p.cout), device=x.device, dtype=x.dtype)
    if residual is not None and residual.shape != out.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != output shape {tuple(out.shape)}")
    wo2, lpb = _tiling(wo, block_m or (256 if wo >= 32 else 128))
    nlines = n * (do + 2) * (ho + 2)
    grid = (triton.cdiv(nlines, lpb), p.weight.shape[1] // p.bn)
    _conv3d_kernel[grid](x, p.weight, p.bias, residual if residual is not None else out, out, nlines,
                         do + 2, ho + 2, wo + 2, dip, hip, wip, xc, cin_offset,
                         p.cin, p.cout, p.cin_pad, p.weight.shape[1],
                         p.stride, p.ks, p.pad, p.kb, p.nchunk, wo2, lpb, p.bn, relu, residual is not None,
                         num_warps=num_warps)
    return out


# ----------------------------------------------------------------------------- CBAM spatial gate
@triton.jit
def _cbam_spatial_kernel(x_ptr, g_ptr, w_ptr, out_ptr, NLINES,
                         DP: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr,
                         C: tl.constexpr, CP: tl.constexpr, KS: tl.constexpr, WO2: tl.constexpr,
                         LPB: tl.constexpr, NASLUNG: tl.constexpr):
    pid = tl.program_id(0)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DP, HP, WP, WO2, LPB)
    ch = tl.arange(0, CP)
    ch_ok = ch < C
    g = tl.load(g_ptr + n[:, None] * C + ch[None, :], mask=store_ok[:, None] & ch_ok[None, :], other=0.0)
    acc = tl.zeros((LPB * WO2,), dtype=tl.float32)
    center = ((n * DP + zp) * HP + yp) * WP + xo + 1
    for tap in range(KS * KS * KS):
        dz = tap // (KS * KS) - KS // 2
        dy = (tap // KS) % KS - KS // 2
        dx = tap % KS - KS // 2
        off = (center + (dz * HP + dy) * WP + dx) * C
        ok = inside
        if KS // 2 > 1:  # wider than the one-voxel zero border: check the tap is inside
            zz = zp + dz
            yy = yp + dy
            xx = xo + 1 + dx
            ok = ok & (zz >= 1) & (zz < DP - 1) & (yy >= 1) & (yy < HP - 1) & (xx >= 1) & (xx < WP - 1)
        mask = ok[:, None]
        if C != CP:
            mask = mask & ch_ok[None, :]
        v = tl.load(x_ptr + off[:, None] + ch[None, :], mask=mask, other=0.0)
        v = v.to(tl.float32) * g
        if C != CP:
            mx = tl.max(tl.where(ch_ok[None, :], v, float("-inf")), axis=1)
        else:
            mx = tl.max(v, axis=1)
        mean = tl.sum(v, axis=1) / C
        w_max = tl.load(w_ptr + tap)
        w_mean = tl.load(w_ptr + KS * KS * KS + tap)
        acc += tl.where(ok, w_max * mx + w_mean * mean, 0.0)
    s = tl.sigmoid(acc)[:, None]
    off = out_vox[:, None] * C + ch[None, :]
    io_ok = store_ok[:, None] & ch_ok[None, :]
    xc = tl.load(x_ptr + off, mask=io_ok, other=0.0).to(tl.float32)
    if NASLUNG:
        y = s * xc + xc
    else:
        y = s * g * xc
    y = tl.where(inside[:, None], y, 0.0)
    tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=io_ok)
    _zero_x_borders(out_ptr, pid, NLINES, WP, LPB, C, CP, 0)


def cbam_spatial(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, *, naslung: bool,
                 block_m: int | None = None, num_warps: int = 4) -> torch.Tensor:
    """CBAM's spatial half on a padded NDHWC buffer.

    ``gate``: the channel gate (N, C) fp32; ``weight``: the spatial conv's (1, 2, k, k, k) weights
    (channel 0 applies to the channel max, 1 to the mean).
    """
    n, dp, hp, wp, c = x.shape
    ks = weight.shape[-1]
    w = weight.detach().float().reshape(2, ks ** 3).contiguous()
    cp = triton.next_power_of_2(c)
    wo2, lpb = _tiling(wp - 2, block_m or (256 if cp <= 4 else 64))
    out = torch.empty_like(x)
    nlines = n * dp * hp
    _cbam_spatial_kernel[(triton.cdiv(nlines, lpb),)](x, gate.float().contiguous(), w, out, nlines, dp, hp, wp, c,
                                                       cp, ks, wo2, lpb, naslung, num_warps=num_warps)
    return out


def to_padded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, D, H, W) input -> the padded NDHWC buffer (N, D+2, H+2, W+2, 1)."""
    return torch.nn.functional.pad(x.to(dtype), (1, 1, 1, 1, 1, 1)).view(x.shape[0], x.shape[2] + 2, x.shape[3] + 2,
                                                                       x.shape[4] + 2, 1)


def interior(x: torch.Tensor) -> torch.Tensor:
    """The unpadded (N, D, H, W, C) view of a padded buffer."""
    return x[:, 1:-1, 1:-1, 1:-1, :]
