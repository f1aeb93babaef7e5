"""Triton kernels for the fast engine: 3D convolutions and CBAM's passes on padded NDHWC buffers.

Why: cuDNN's 3D kernels run the 1-16-channel convolutions of these networks at a few percent of
the memory floor (a 4->4 conv on 1024 crops of 32^3 took ~10 ms on an H100), and those small
layers are most of a member's time.

**Layout.** Every activation is a channels-last buffer ``(N, D+2, H+2, W+2, C)`` whose one-voxel
border is zero -- the zero padding of the next 3x3x3 conv is already in memory, so the kernels
need no per-tap bounds checks. Each kernel writes the *whole* padded output, border zeros
included, so no buffer ever needs clearing.

**Convolution** (:func:`conv3d`) is an implicit GEMM: a tile of ``BM`` output voxels times
``BN`` output channels, the reduction axis ``k = tap * CIN_PAD + ci`` walked in chunks of ``KB``
(several taps per chunk when there are few channels), one ``tl.dot`` per chunk with fp32
accumulation. The epilogue adds the folded-BN bias, applies ReLU and adds a residual -- so a
residual block ``relu(conv2) + relu(shortcut)`` is two launches and no extra pass.
:func:`conv3d` with a conv packed for ``xb``-voxel rows (``pack_conv(..., xb=2)``) runs the
x-run kernel instead: a tile row is ``xb`` consecutive output voxels, each (dz, dy) one
contiguous run of ``xb + 2`` input voxels times a weight banded along x, so each input voxel is
fetched 9 (xb + 2) / xb times instead of 27 (the one-voxel kernel is bound by those re-reads
from L2). Its epilogue can also compute the block's 1x1 shortcut (``shortcut=``), removing that
launch and its buffer.

**CBAM** in passes over memory, never per-tap gathers of the activation: :func:`channel_stats`
(per-channel sums and maxima), one launch for the channel MLP (:func:`channel_gate`),
:func:`cbam_desc` writes the 2-channel spatial descriptor, the gate's 3x3x3 (or 7x7x7) conv runs
x-folded on cuDNN (:mod:`naslung.ensemble.fold`), and :func:`cbam_apply` applies the sigmoid and
writes the block's output (``s * x + x`` for NAS-Lung's CBAM, ``s * g * x`` for the original).

**Folded convs** (:mod:`naslung.ensemble.fold`) return unpadded outputs; :func:`bias_act_pad`
adds bias, ReLU and residual (or the fused shortcut) and writes the padded buffer.

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
# The kernels that write padded buffers tile them by *lines*: a program owns LPB consecutive padded (n, z, y) lines
# and, within each, the WO2 (power of two >= W) interior x positions, so a tap's loads over a
# tile are runs of consecutive voxels (coalesced, and vectorised along x when the channel count
# is 1). Border lines are written as zeros; each line's two x-border voxels too.
@triton.jit
def _line_rows(pid, NLINES, DOP: tl.constexpr, HOP: tl.constexpr, WOP: tl.constexpr, WO2: tl.constexpr,
               LPB: tl.constexpr, XB: tl.constexpr = 1, XBORDER: tl.constexpr = 1):
    """Rows of a program's tile: each is XB consecutive output voxels of a line, starting at ``xo``
    (``out_vox``: its index in an output whose lines have XBORDER zero voxels at each x end)."""
    i = tl.arange(0, LPB * (WO2 // XB))
    xo = (i % (WO2 // XB)) * XB
    line = pid * LPB + i // (WO2 // XB)
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
    out_vox = line.to(tl.int64) * (WOP - 2 + 2 * XBORDER) + xo + XBORDER
    return xo, yp, zp, n, inside, store_ok, out_vox


@triton.jit
def _zero_x_borders(out_ptr, pid, NLINES, WOP: tl.constexpr, LPB: tl.constexpr, C: tl.constexpr, CB: tl.constexpr,
                    c0, OSPLIT: tl.constexpr = 0, GSTRIDE=0):
    lines = pid * LPB + tl.arange(0, LPB)
    cc = c0 + tl.arange(0, CB)
    ok = (lines < NLINES)[:, None] & (cc < C)[None, :]
    if OSPLIT == 0:  # one buffer with C channels
        first = (lines.to(tl.int64) * WOP)[:, None] * C + cc[None, :]
        step = (WOP - 1) * C
    else:  # C / OSPLIT buffers of OSPLIT channels, GSTRIDE elements apart
        first = (lines.to(tl.int64) * WOP)[:, None] * OSPLIT + ((cc // OSPLIT) * GSTRIDE + cc % OSPLIT)[None, :]
        step = (WOP - 1) * OSPLIT
    zero = tl.zeros((LPB, CB), dtype=out_ptr.dtype.element_ty)
    tl.store(out_ptr + first, zero, mask=ok)
    tl.store(out_ptr + first + step, zero, mask=ok)


@triton.jit
def _unpadded_vox(n, zp, yp, xo, DP: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    """Index of padded voxel (n, zp, yp, xo + 1) in the unpadded (N, DP-2, HP-2, WP-2) grid."""
    return ((n * (DP - 2) + zp - 1) * (HP - 2) + yp - 1) * (WP - 2) + xo


@triton.jit
def _padded_vox(n, zp, yp, xo, DP: tl.constexpr, HP: tl.constexpr, W: tl.constexpr, XBORDER: tl.constexpr):
    """Index of voxel (n, zp, yp, xo) of the interior's x range in a (N, DP, HP, W + 2 XBORDER) grid."""
    return ((n * DP + zp) * HP + yp) * (W + 2 * XBORDER) + xo + XBORDER


def _tiling(out_w: int, block_m: int) -> tuple[int, int]:
    wo2 = triton.next_power_of_2(out_w)
    return wo2, max(1, block_m // wo2)


def _pass_launch(n: int, dp: int, hp: int, w: int, c: int, block_m: int | None) -> tuple[int, int, int, int]:
    """(channel block, WO2, LPB, grid size) of a one-pass kernel over a padded (n, dp, hp, w + 2, c)
    output: about 1024 elements per program unless ``block_m`` voxels are asked for."""
    cp = triton.next_power_of_2(c)
    wo2, lpb = _tiling(w, block_m or max(1024 // cp, 1))
    return cp, wo2, lpb, triton.cdiv(n * dp * hp, lpb)


@triton.jit
def _shortcut_term(sx_ptr, sw_ptr, sb_ptr, vox, row_ok, lim, co, WCOLS: tl.constexpr, XB: tl.constexpr,
                   SC_CIN: tl.constexpr, SC_KB: tl.constexpr, RAGGED: tl.constexpr):
    """``relu(1x1 conv + bias)`` of a residual block's shortcut, in the caller's output columns:
    each row's XB voxels from padded voxel ``vox`` of the block input (weight block-diagonal when
    XB > 1; ``lim``: the row's valid elements when its line ends inside it)."""
    j = tl.arange(0, SC_KB)
    m = row_ok[:, None]
    if SC_KB != XB * SC_CIN:
        m = m & (j < XB * SC_CIN)[None, :]
    if RAGGED:
        m = m & (j[None, :] < lim[:, None])
    a = tl.load(sx_ptr + vox[:, None] * SC_CIN + j[None, :], mask=m, other=0.0)
    w = tl.load(sw_ptr + j[:, None] * WCOLS + co[None, :])
    return tl.maximum(tl.dot(a, w) + tl.load(sb_ptr + co)[None, :], 0.0)


# ----------------------------------------------------------------------------- convolution
@triton.jit
def _conv3d_kernel(x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, NLINES,
                   DOP: tl.constexpr, HOP: tl.constexpr, WOP: tl.constexpr,
                   DIP: tl.constexpr, HIP: tl.constexpr, WIP: tl.constexpr,
                   CIN: tl.constexpr, COUT: tl.constexpr, CIN_PAD: tl.constexpr, WCOLS: tl.constexpr,
                   STRIDE: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr,
                   KB: tl.constexpr, NCHUNK: tl.constexpr, WO2: tl.constexpr, LPB: tl.constexpr,
                   BN: tl.constexpr, RELU: tl.constexpr, HAS_RES: tl.constexpr,
                   OSPLIT: tl.constexpr, GSTRIDE, OXB: tl.constexpr = 1):
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DOP, HOP, WOP, WO2, LPB, 1, OXB)
    # first tap of each output voxel's window, in the padded input's coordinates
    zs = (zp - 1) * STRIDE + 1 - PAD
    ys = (yp - 1) * STRIDE + 1 - PAD
    xs = xo * STRIDE + 1 - PAD
    base = (((n * DIP + zs) * HIP + ys) * WIP + xs) * CIN
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
        col_off = ((dz * HIP + dy) * WIP + dx) * CIN + ci
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
    if OSPLIT == 0:
        out_off = out_vox[:, None] * COUT + co[None, :]
    else:
        out_off = out_vox[:, None] * OSPLIT + ((co // OSPLIT).to(tl.int64) * GSTRIDE + co % OSPLIT)[None, :]
    out_ok = store_ok[:, None] & (co < COUT)[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=out_ok & inside[:, None], other=0.0).to(tl.float32)
    acc = tl.where(inside[:, None], acc, 0.0)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
    if OXB:
        _zero_x_borders(out_ptr, pid, NLINES, WOP, LPB, COUT, BN, pid_n * BN, OSPLIT, GSTRIDE)


@triton.jit
def _conv3d_xrun_kernel(x_ptr, w_ptr, b_ptr, res_ptr, out_ptr, NLINES,
                        DOP: tl.constexpr, HOP: tl.constexpr, WOP: tl.constexpr,
                        DIP: tl.constexpr, HIP: tl.constexpr, WIP: tl.constexpr,
                        CIN: tl.constexpr, COUT: tl.constexpr, WCOLS: tl.constexpr, KS: tl.constexpr,
                        XB: tl.constexpr, KB: tl.constexpr, NSUB: tl.constexpr, WO2: tl.constexpr,
                        LPB: tl.constexpr, BN: tl.constexpr, CP: tl.constexpr, RELU: tl.constexpr,
                        HAS_RES: tl.constexpr, sx_ptr, sw_ptr, sb_ptr, HAS_SC: tl.constexpr,
                        SC_CIN: tl.constexpr, SC_KB: tl.constexpr):
    """Stride-1 'same' conv, a tile row = XB output voxels of a line: per (dz, dy) one contiguous
    run of XB + KS - 1 input voxels times a banded weight (columns (xo, co)), so each input voxel
    is fetched 9 (XB + 2) / XB times instead of 27."""
    pid = tl.program_id(0)
    pid_n = tl.program_id(1)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DOP, HOP, WOP, WO2, LPB, XB)
    RUN: tl.constexpr = (XB + KS - 1) * CIN  # elements of one run
    base = (((n * DIP + zp - KS // 2) * HIP + yp - KS // 2) * WIP + xo + 1 - KS // 2) * CIN
    cols = tl.arange(0, KB)
    co = pid_n * BN + tl.arange(0, BN)  # output column: (voxel of the row, channel)
    acc = tl.zeros((LPB * (WO2 // XB), BN), dtype=tl.float32)
    RAGGED: tl.constexpr = (WOP - 2) % XB != 0  # the last row of a line runs past the line's end
    for c in range(KS * KS * NSUB):
        j = (c % NSUB) * KB + cols
        tap = c // NSUB
        off = ((tap // KS) * HIP + tap % KS) * WIP * CIN + j
        mask = inside[:, None]
        if NSUB * KB != RUN:
            mask = mask & (j < RUN)[None, :]
        if RAGGED:
            mask = mask & ((xo * CIN)[:, None] + j[None, :] < WIP * CIN)
        a = tl.load(x_ptr + base[:, None] + off[None, :], mask=mask, other=0.0)
        w = tl.load(w_ptr + (c * KB + cols)[:, None] * WCOLS + co[None, :])
        acc += tl.dot(a, w)
    acc += tl.load(b_ptr + co)[None, :]
    if RELU:
        acc = tl.maximum(acc, 0.0)
    out_off = out_vox[:, None] * COUT + co[None, :]
    out_ok = store_ok[:, None] & (co < XB * COUT)[None, :]
    if RAGGED:
        out_ok = out_ok & (xo[:, None] + (co // COUT)[None, :] < WOP - 2)
    if HAS_RES:
        acc += tl.load(res_ptr + out_off, mask=out_ok & inside[:, None], other=0.0).to(tl.float32)
    if HAS_SC:
        acc += _shortcut_term(sx_ptr, sw_ptr, sb_ptr, out_vox, inside, (WOP - 2 - xo) * SC_CIN, co, WCOLS, XB,
                              SC_CIN, SC_KB, RAGGED)
    acc = tl.where(inside[:, None], acc, 0.0)
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_ok)
    if pid_n == 0:
        _zero_x_borders(out_ptr, pid, NLINES, WOP, LPB, COUT, CP, 0)


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
    nchunk: int  # reduction chunks (x-run kernel: chunks per (dz, dy) run)
    bn: int
    xb: int = 1  # output voxels per tile row (> 1: the x-run kernel, weight banded along x)
    # launch parameters (None: conv3d's defaults); see conv3d
    block_m: int | None = None
    num_warps: int = 4
    num_stages: int | None = None


def pack_conv(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, padding: int,
              dtype: torch.dtype, kb: int | None = None, xb: int = 1) -> PackedConv:
    """Pack a cubic-kernel conv ``weight`` (COUT, CIN, k, k, k) for :func:`conv3d`.

    ``kb``: reduction chunk (a power of two >= 16); by default 128 for 4 channels, 32 for 1, 2 and 8
    (several taps per chunk), else min(64, channels), doubled for strided convs -- the fastest of
    16..128 measured on an H200 (docs/benchmarks.md). ``xb`` > 1 (a power of two; 3x3x3
    stride-1 convs only) packs for the x-run kernel: tile rows of ``xb`` output voxels, the
    weight banded along x.
    """
    cout, cin, kd, kh, kw = weight.shape
    if not kd == kh == kw or kd % 2 == 0 or padding != kd // 2 or padding > 1:
        raise ValueError(f"conv3d kernel supports 1x1x1 and 3x3x3 'same'-padded kernels, got {tuple(weight.shape)} "
                         f"padding {padding}")
    ks = kd
    if xb != 1:
        return _pack_xrun(weight, bias, stride, dtype, xb, kb)
    cin_pad = triton.next_power_of_2(cin)
    if kb is None:
        if cin_pad >= 16:
            kb = min(64, cin_pad * (2 if stride == 2 else 1))  # strided 16->16: 0.095 vs 0.123 ms at kb 16
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


def _pack_xrun(weight: torch.Tensor, bias: torch.Tensor | None, stride: int, dtype: torch.dtype, xb: int,
               kb: int | None) -> PackedConv:
    """Rows ``(dz * k + dy) * nsub * kb + xi * cin + ci``, columns ``xo * cout + co``:
    ``W[co, ci, dz, dy, xi - xo]`` where ``0 <= xi - xo < k``, else zero."""
    cout, cin, ks = weight.shape[0], weight.shape[1], weight.shape[-1]
    if ks != 3 or stride != 1 or xb < 2 or xb & (xb - 1):
        raise ValueError(f"the x-run kernel takes 3x3x3 stride-1 convs and xb a power of two >= 2, got kernel {ks}, "
                         f"stride {stride}, xb {xb}")
    run = (xb + ks - 1) * cin
    kb = kb or max(16, min(128, triton.next_power_of_2(run)))
    nsub = math.ceil(run / kb)
    ncols = xb * cout
    bn = min(128, max(16, triton.next_power_of_2(ncols)))
    wcols = math.ceil(ncols / bn) * bn
    w = torch.zeros(ks * ks, nsub * kb, wcols, dtype=torch.float32, device=weight.device)
    # (COUT, CIN, kz, ky, kx) -> (kz * k + ky, kx, CIN, COUT): one (CIN, COUT) block per tap
    taps = weight.detach().float().permute(2, 3, 4, 1, 0).reshape(ks * ks, ks, cin, cout)
    for xo in range(xb):
        for dx in range(ks):
            xi = xo + dx
            w[:, xi * cin:(xi + 1) * cin, xo * cout:(xo + 1) * cout] = taps[:, dx]
    b = torch.zeros(wcols, dtype=torch.float32, device=weight.device)
    if bias is not None:
        b[:ncols] = bias.detach().float().repeat(xb)
    return PackedConv(w.reshape(ks * ks * nsub * kb, wcols).to(dtype).contiguous(), b, cin, cout, ks, 1, 1,
                      cin, kb, nsub, bn, xb=xb)


@dataclass
class PackedShortcut:
    """A residual block's 1x1 shortcut conv laid out for the epilogue of the conv (or folded conv)
    that closes the block: rows ``xo * cin + ci``, the consumer's output columns."""

    weight: torch.Tensor  # (kb, wcols)
    bias: torch.Tensor  # (wcols,) fp32
    cin: int
    kb: int
    xb: int


def pack_shortcut(weight: torch.Tensor, bias: torch.Tensor | None, xb: int, wcols: int,
                  dtype: torch.dtype) -> PackedShortcut:
    """Pack a 1x1x1 conv ``weight`` (COUT, CIN, 1, 1, 1) for a consumer whose tile rows hold ``xb``
    voxels and whose weight has ``wcols`` columns ``xo * cout + co``."""
    cout, cin = weight.shape[:2]
    if tuple(weight.shape[2:]) != (1, 1, 1) or xb * cout > wcols:
        raise ValueError(f"a fused shortcut must be a 1x1x1 conv fitting {wcols} columns, got {tuple(weight.shape)} "
                         f"for rows of {xb}")
    kb = max(16, triton.next_power_of_2(xb * cin))
    w = torch.zeros(kb, wcols, dtype=torch.float32, device=weight.device)
    wt = weight.detach().float()[:, :, 0, 0, 0].T
    b = torch.zeros(wcols, dtype=torch.float32, device=weight.device)
    for xo in range(xb):
        w[xo * cin:(xo + 1) * cin, xo * cout:(xo + 1) * cout] = wt
        if bias is not None:
            b[xo * cout:(xo + 1) * cout] = bias.detach().float()
    return PackedShortcut(w.to(dtype).contiguous(), b, cin, kb, xb)


def _shortcut_args(shortcut, out_shape: tuple, xb: int, wcols: int) -> tuple:
    """Kernel arguments (input, weight, bias, on, cin, kb) for an optional fused shortcut."""
    if shortcut is None:
        return None, None, None, False, 1, 16
    h, ps = shortcut
    if tuple(h.shape) != (*out_shape[:-1], ps.cin) or ps.xb != xb or ps.weight.shape[1] != wcols:
        raise ValueError(f"shortcut input {tuple(h.shape)} (packed for rows of {ps.xb}, {ps.weight.shape[1]} columns) "
                         f"does not fit an output {tuple(out_shape)} with rows of {xb}, {wcols} columns")
    return h, ps.weight, ps.bias, True, ps.cin, ps.kb


def conv3d(x: torch.Tensor, p: PackedConv, *, relu: bool = True, residual: torch.Tensor | None = None,
           shortcut: tuple[torch.Tensor, PackedShortcut] | None = None,
           out_split: int | None = None, block_m: int | None = None, num_warps: int | None = None,
           num_stages: int | None = None, x_border: int = 1) -> torch.Tensor:
    """Conv of a padded NDHWC buffer -> padded NDHWC buffer (bias, ReLU, + residual fused).

    ``out_split``: write output channels in groups of this many to separate buffers, returned
    stacked as (cout / out_split, N, D+2, H+2, W+2, out_split) -- all members' first convs run as
    one and each member gets its own contiguous buffer. ``x_border=0`` (one-voxel rows only):
    the output lines have no x border, (N, D+2, H+2, W, C) -- the layout a folded conv reads
    fastest when W * C is a multiple of 128 (the stem's 4->4 conv: 0.39 vs 0.62 ms on an H200,
    ``folded_conv(..., x_border=0)``). ``shortcut`` (x-run kernel only): (block
    input, packed 1x1 conv) -- adds ``relu(shortcut(input))`` in the epilogue, so a residual block
    needs no separate shortcut launch. ``block_m``: output voxels per program
    (default 256 for rows of 16 or more voxels, else 128: the H200 sweep's best). ``block_m``,
    ``num_warps`` and ``num_stages`` default to the packed conv's.
    """
    n, dip, hip, wip, xc = x.shape
    if xc != p.cin:
        raise ValueError(f"conv expects {p.cin} input channels, buffer has {xc}")
    d, h, w = dip - 2, hip - 2, wip - 2
    do, ho, wo = ((s + 2 * p.pad - p.ks) // p.stride + 1 for s in (d, h, w))
    if x_border not in (0, 1) or (x_border == 0 and (p.xb > 1 or residual is not None or shortcut is not None)):
        raise ValueError(f"x_border must be 1, or 0 for one-voxel rows without residual or shortcut; got {x_border}")
    padded = (n, do + 2, ho + 2, wo + 2 * x_border)
    if out_split is not None:
        if out_split < 1 or p.cout % out_split or residual is not None:
            raise ValueError(f"out_split {out_split} must divide {p.cout} output channels (and no residual)")
        out = torch.empty((p.cout // out_split, *padded, out_split), device=x.device, dtype=x.dtype)
        osplit, gstride = out_split, out[0].numel()
    else:
        out = torch.empty((*padded, p.cout), device=x.device, dtype=x.dtype)
        osplit, gstride = 0, 0
    if residual is not None and residual.shape != out.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != output shape {tuple(out.shape)}")
    if shortcut is not None and (p.xb == 1 or residual is not None):
        # (fused into the one-voxel-row kernel it faulted on the H200 -- an illegal address, not
        # diagnosed; the x-run kernel and the folded epilogue pass the GPU tests)
        raise ValueError("a fused shortcut needs the x-run kernel (xb > 1) and no residual")
    sx, sw, sb, has_sc, sc_cin, sc_kb = _shortcut_args(shortcut, tuple(out.shape), p.xb, p.weight.shape[1])
    block_m = block_m or p.block_m or (256 if wo >= 16 else 128)
    num_warps = num_warps or p.num_warps
    num_stages = num_stages or p.num_stages
    wo2, lpb = _tiling(max(wo, p.xb), block_m)
    nlines = n * (do + 2) * (ho + 2)
    grid = (triton.cdiv(nlines, lpb), p.weight.shape[1] // p.bn)
    extra = {} if num_stages is None else {"num_stages": num_stages}
    if p.xb > 1:
        if out_split is not None:
            raise ValueError("the x-run kernel does not split its output")
        _conv3d_xrun_kernel[grid](x, p.weight, p.bias, residual if residual is not None else out, out, nlines,
                                  do + 2, ho + 2, wo + 2, dip, hip, wip, p.cin, p.cout, p.weight.shape[1], p.ks,
                                  p.xb, p.kb, p.nchunk, wo2, lpb, p.bn, triton.next_power_of_2(p.cout), relu,
                                  residual is not None, sx, sw, sb, has_sc, sc_cin, sc_kb,
                                  num_warps=num_warps, **extra)
        return out
    _conv3d_kernel[grid](x, p.weight, p.bias, residual if residual is not None else out, out, nlines,
                         do + 2, ho + 2, wo + 2, dip, hip, wip,
                         p.cin, p.cout, p.cin_pad, p.weight.shape[1],
                         p.stride, p.ks, p.pad, p.kb, p.nchunk, wo2, lpb, p.bn, relu, residual is not None,
                         osplit, gstride, x_border, num_warps=num_warps, **extra)
    return out


# ----------------------------------------------------------------------------- epilogue of folded convs
@triton.jit
def _bias_act_pad_kernel(y_ptr, b_ptr, res_ptr, out_ptr, NLINES,
                         DP: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                         WO2: tl.constexpr, LPB: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
                         HAS_RES: tl.constexpr, sx_ptr, sw_ptr, sb_ptr, HAS_SC: tl.constexpr, SC_CIN: tl.constexpr,
                         SC_KB: tl.constexpr, OXB: tl.constexpr = 1):
    pid = tl.program_id(0)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DP, HP, WP, WO2, LPB, 1, OXB)
    ch = tl.arange(0, CP)
    ch_ok = (ch < C)[None, :]
    src = _unpadded_vox(n, zp, yp, xo, DP, HP, WP) * C
    v = tl.load(y_ptr + src[:, None] + ch[None, :], mask=inside[:, None] & ch_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(b_ptr + ch, mask=ch < C, other=0.0)[None, :]
    if RELU:
        v = tl.maximum(v, 0.0)
    off = out_vox[:, None] * C + ch[None, :]
    if HAS_RES:
        v += tl.load(res_ptr + off, mask=inside[:, None] & ch_ok, other=0.0).to(tl.float32)
    if HAS_SC:
        v += _shortcut_term(sx_ptr, sw_ptr, sb_ptr, out_vox, inside, xo, ch, CP, 1, SC_CIN, SC_KB, False)
    v = tl.where(inside[:, None], v, 0.0)
    tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=store_ok[:, None] & ch_ok)
    if OXB:
        _zero_x_borders(out_ptr, pid, NLINES, WP, LPB, C, CP, 0)


def bias_act_pad(y: torch.Tensor, bias: torch.Tensor | None, *, relu: bool = True,
                 residual: torch.Tensor | None = None, shortcut: tuple[torch.Tensor, PackedShortcut] | None = None,
                 block_m: int | None = None, dtype: torch.dtype | None = None, x_border: int = 1) -> torch.Tensor:
    """Unpadded NDHWC ``y`` (a folded conv's raw output) -> padded buffer of ``relu(y + bias) + residual``
    (in ``dtype``, default ``y``'s). ``shortcut``: (block input, 1x1 conv packed for
    ``shortcut_columns(C)`` columns) adds ``relu(shortcut(input))`` instead of a residual.
    ``x_border=0`` (no residual or shortcut): the output has no x border, for a folded conv."""
    n, d, h, w, c = y.shape
    if x_border not in (0, 1) or (x_border == 0 and (residual is not None or shortcut is not None)):
        raise ValueError(f"x_border must be 1, or 0 without residual or shortcut; got {x_border}")
    out = torch.empty((n, d + 2, h + 2, w + 2 * x_border, c), device=y.device, dtype=dtype or y.dtype)
    if residual is not None and residual.shape != out.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != output shape {tuple(out.shape)}")
    if shortcut is not None:
        if residual is not None:
            raise ValueError("a fused shortcut replaces the residual")
        cols = shortcut_columns(c)
        block_m = block_m or max(16, 1024 // cols)
    else:
        cols = triton.next_power_of_2(c)
    sx, sw, sb, has_sc, sc_cin, sc_kb = _shortcut_args(shortcut, tuple(out.shape), 1, cols)
    _, wo2, lpb, grid = _pass_launch(n, d + 2, h + 2, w, cols, block_m)
    _bias_act_pad_kernel[(grid,)](
        y, bias if bias is not None else y, residual if residual is not None else out, out, n * (d + 2) * (h + 2),
        d + 2, h + 2, w + 2, c, cols, wo2, lpb, bias is not None, relu, residual is not None,
        sx, sw, sb, has_sc, sc_cin, sc_kb, x_border)
    return out


def shortcut_columns(channels: int) -> int:
    """Columns a shortcut fused into :func:`bias_act_pad` is packed for (``pack_shortcut(..., xb=1, wcols=...)``)."""
    return max(16, triton.next_power_of_2(channels))


# ----------------------------------------------------------------------------- CBAM as passes
# CBAM's input is either a padded buffer or the *raw* output of a folded conv (unpadded, before its
# bias and ReLU): then each pass applies ``relu(y + bias)`` as it loads, and the folded conv needs
# no epilogue pass of its own (``bias=`` below).
@triton.jit
def _channel_stats_kernel(x_ptr, b_ptr, sum_ptr, max_ptr, V, CHUNK: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                          BV: tl.constexpr, HAS_BIAS: tl.constexpr):
    n = tl.program_id(0)
    part = tl.program_id(1)
    ch = tl.arange(0, CP)
    ch_ok = ch < C
    vs = tl.arange(0, BV)
    acc_s = tl.zeros((BV, CP), dtype=tl.float32)
    acc_m = tl.full((BV, CP), float("-inf"), dtype=tl.float32)
    start = part * CHUNK
    base = x_ptr + n.to(tl.int64) * V * C
    if HAS_BIAS:
        bias = tl.load(b_ptr + ch, mask=ch_ok, other=0.0)[None, :]
    for v0 in range(0, CHUNK, BV):  # constexpr bounds: the interpreter cannot loop to a runtime value
        v = start + v0 + vs
        ok = ((v < V) & (v < start + CHUNK))[:, None] & ch_ok[None, :]
        t = tl.load(base + v[:, None] * C + ch[None, :], mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            t = tl.where(ok, tl.maximum(t + bias, 0.0), 0.0)
        acc_s += t
        acc_m = tl.maximum(acc_m, tl.where(ok, t, float("-inf")))
    tl.atomic_add(sum_ptr + n * C + ch, tl.sum(acc_s, axis=0), mask=ch_ok)
    tl.atomic_max(max_ptr + n * C + ch, tl.max(acc_m, axis=0), mask=ch_ok)


def channel_stats(x: torch.Tensor, parts: int | None = None,
                  bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(crop, channel) sum and max over every voxel of ``x`` (N, ..., C), both fp32 (N, C);
    of ``relu(x + bias)`` when ``bias`` is given (``x`` a folded conv's raw output).

    One pass over ``x``; each crop is split into ``parts`` chunks (default: enough programs to fill
    the card) that meet through atomics.
    """
    n, c = x.shape[0], x.shape[-1]
    v = x[0].numel() // c
    cp = triton.next_power_of_2(c)
    bv = max(16, 2048 // cp)
    if parts is None:
        parts = max(1, min(triton.cdiv(v, 4 * bv), triton.cdiv(1024, n)))
    chunk = triton.cdiv(triton.cdiv(v, parts), bv) * bv
    parts = triton.cdiv(v, chunk)
    s = torch.zeros((n, c), device=x.device, dtype=torch.float32)
    m = torch.full((n, c), float("-inf"), device=x.device, dtype=torch.float32)
    _channel_stats_kernel[(n, parts)](x, _bias_arg(bias, c, x), s, m, v, chunk, c, cp, bv, bias is not None)
    return s, m


def _cbam_geometry(x: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int, int, int, int]:
    """(N, D+2, H+2, W+2, C) of CBAM's padded input, or of the padded buffer a folded conv's raw
    output ``x`` (N, D, H, W, C) stands for when ``bias`` is given."""
    n, d, h, w, c = x.shape
    return (n, d, h, w, c) if bias is None else (n, d + 2, h + 2, w + 2, c)


def _bias_arg(bias: torch.Tensor | None, c: int, fallback: torch.Tensor) -> torch.Tensor:
    if bias is None:
        return fallback
    if bias.numel() < c:
        raise ValueError(f"bias has {bias.numel()} values for {c} channels")
    return bias.float().contiguous()


@triton.jit
def _channel_gate_kernel(sum_ptr, max_ptr, fc1_ptr, fc2_ptr, out_ptr, inv_count, C: tl.constexpr, CP: tl.constexpr,
                         HID: tl.constexpr, HP: tl.constexpr, RELU: tl.constexpr, SOFTMAX: tl.constexpr):
    n = tl.program_id(0)
    c = tl.arange(0, CP)
    hdn = tl.arange(0, HP)
    c_ok = c < C
    w_ok = (hdn < HID)[:, None] & c_ok[None, :]
    fc1 = tl.load(fc1_ptr + hdn[:, None] * C + c[None, :], mask=w_ok, other=0.0)  # (HID, C)
    fc2t = tl.load(fc2_ptr + c[None, :] * HID + hdn[:, None], mask=w_ok, other=0.0)  # (C, HID) read transposed
    avg = tl.load(sum_ptr + n * C + c, mask=c_ok, other=0.0) * inv_count
    mx = tl.load(max_ptr + n * C + c, mask=c_ok, other=0.0)
    h_avg = tl.sum(fc1 * avg[None, :], axis=1)
    h_max = tl.sum(fc1 * mx[None, :], axis=1)
    if RELU:
        h_avg = tl.maximum(h_avg, 0.0)
        h_max = tl.maximum(h_max, 0.0)
    z = tl.sum(fc2t * (h_avg + h_max)[:, None], axis=0)  # fc2 is linear: fc2(a) + fc2(b) = fc2(a + b)
    if SOFTMAX:
        z = tl.where(c_ok, z, float("-inf"))
        e = tl.exp(z - tl.max(z, axis=0))
        g = e / tl.sum(e, axis=0)
    else:
        g = tl.sigmoid(z)
    tl.store(out_ptr + n * C + c, g, mask=c_ok)


def channel_gate(total: torch.Tensor, mx: torch.Tensor, count: int, fc1: torch.Tensor, fc2: torch.Tensor, *,
                 relu: bool, softmax: bool) -> torch.Tensor:
    """CBAM's channel gate (N, C) fp32 from per-channel sums over ``count`` voxels and maxima, in one
    launch: ``gate(fc2(act(fc1(mean))) + fc2(act(fc1(max))))`` with ``gate`` softmax or sigmoid."""
    n, c = total.shape
    hid = fc1.shape[0]
    if fc1.shape != (hid, c) or fc2.shape != (c, hid):
        raise ValueError(f"gate MLP shapes {tuple(fc1.shape)}, {tuple(fc2.shape)} do not fit {c} channels")
    out = torch.empty((n, c), device=total.device, dtype=torch.float32)
    _channel_gate_kernel[(n,)](total, mx, fc1.float().contiguous(), fc2.float().contiguous(), out, 1.0 / count, c,
                               triton.next_power_of_2(c), hid, triton.next_power_of_2(hid), relu, softmax)
    return out


@triton.jit
def _cbam_desc_kernel(x_ptr, b_ptr, g_ptr, out_ptr, NLINES, DP: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr,
                      C: tl.constexpr, CP: tl.constexpr, WO2: tl.constexpr, LPB: tl.constexpr, RAW: tl.constexpr):
    pid = tl.program_id(0)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DP, HP, WP, WO2, LPB)
    ch = tl.arange(0, CP)
    ch_ok = ch < C
    m2 = inside[:, None] & ch_ok[None, :]
    if RAW:  # unpadded raw conv output, used as relu(y + bias)
        src = _unpadded_vox(n, zp, yp, xo, DP, HP, WP)
    else:
        src = out_vox
    t = tl.load(x_ptr + src[:, None] * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
    if RAW:
        t = tl.where(m2, tl.maximum(t + tl.load(b_ptr + ch, mask=ch_ok, other=0.0)[None, :], 0.0), 0.0)
    t = t * tl.load(g_ptr + n[:, None] * C + ch[None, :], mask=m2, other=0.0)
    if C != CP:
        mx = tl.max(tl.where(ch_ok[None, :], t, float("-inf")), axis=1)
    else:
        mx = tl.max(t, axis=1)
    mean = tl.sum(t, axis=1) / C
    dst = 2 * _padded_vox(n, zp, yp, xo, DP, HP, WP - 2, 0)  # the descriptor's lines are W voxels long
    tl.store(out_ptr + dst, mx.to(out_ptr.dtype.element_ty), mask=store_ok)
    tl.store(out_ptr + dst + 1, mean.to(out_ptr.dtype.element_ty), mask=store_ok)


def cbam_desc(x: torch.Tensor, gate: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """CBAM's spatial descriptor of a padded buffer: channel max and mean of ``gate * x`` per voxel,
    (N, D+2, H+2, W, 2) -- padded in z and y (zero there: zero inputs give zero max and mean), not
    in x, so that the folded gate conv sees 2 * W channels (a multiple of 8, which cuDNN's fast
    kernels need; run it with ``x_border=0``). With ``bias``, ``x`` is a folded conv's raw output
    (N, D, H, W, C) and the descriptor is that of ``relu(x + bias)``."""
    n, dp, hp, wp, c = _cbam_geometry(x, bias)
    out = torch.empty((n, dp, hp, wp - 2, 2), device=x.device, dtype=x.dtype)
    cp, wo2, lpb, grid = _pass_launch(n, dp, hp, wp - 2, c, 4096 // triton.next_power_of_2(c))
    _cbam_desc_kernel[(grid,)](x, _bias_arg(bias, c, x), gate.float().contiguous(), out, n * dp * hp, dp, hp, wp, c,
                               cp, wo2, lpb, bias is not None)
    return out


@triton.jit
def _cbam_apply_kernel(x_ptr, b_ptr, a_ptr, g_ptr, out_ptr, NLINES,
                       DP: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                       WO2: tl.constexpr, LPB: tl.constexpr, NASLUNG: tl.constexpr, RAW: tl.constexpr,
                       OXB: tl.constexpr):
    pid = tl.program_id(0)
    xo, yp, zp, n, inside, store_ok, out_vox = _line_rows(pid, NLINES, DP, HP, WP, WO2, LPB, 1, OXB)
    ch = tl.arange(0, CP)
    ch_ok = (ch < C)[None, :]
    a_off = _unpadded_vox(n, zp, yp, xo, DP, HP, WP)
    s = tl.sigmoid(tl.load(a_ptr + a_off, mask=inside, other=0.0).to(tl.float32))[:, None]
    off = out_vox[:, None] * C + ch[None, :]
    m2 = inside[:, None] & ch_ok
    if RAW:
        xc = tl.load(x_ptr + a_off[:, None] * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
        xc = tl.maximum(xc + tl.load(b_ptr + ch, mask=ch < C, other=0.0)[None, :], 0.0)
    elif OXB:
        xc = tl.load(x_ptr + off, mask=m2, other=0.0).to(tl.float32)
    else:  # the input keeps its x border
        in_vox = _padded_vox(n, zp, yp, xo, DP, HP, WP - 2, 1)
        xc = tl.load(x_ptr + in_vox[:, None] * C + ch[None, :], mask=m2, other=0.0).to(tl.float32)
    if NASLUNG:
        y = s * xc + xc
    else:
        y = s * xc * tl.load(g_ptr + n[:, None] * C + ch[None, :], mask=m2, other=0.0)
    y = tl.where(inside[:, None], y, 0.0)
    tl.store(out_ptr + off, y.to(out_ptr.dtype.element_ty), mask=store_ok[:, None] & ch_ok)
    if OXB:
        _zero_x_borders(out_ptr, pid, NLINES, WP, LPB, C, CP, 0)


def cbam_apply(x: torch.Tensor, logits: torch.Tensor, gate: torch.Tensor, *, naslung: bool,
               block_m: int | None = None, bias: torch.Tensor | None = None, x_border: int = 1) -> torch.Tensor:
    """CBAM's output as a padded buffer from the spatial logits (N, D, H, W) (before the sigmoid):
    ``s * x + x`` for NAS-Lung's CBAM, ``s * gate * x`` for the original. With ``bias``, ``x`` is
    a folded conv's raw output (N, D, H, W, C), used as ``relu(x + bias)``. ``x_border=0``: the
    output has no x border (for a folded conv to read).

    (The gate's 3x3x3 conv computed here from the descriptor's 27 neighbours, instead of as a
    folded cuDNN conv writing logits, made this pass 3x slower on an H200: 4.9 vs 1.5 ms per
    batch of 1024 over the ensemble's 20 CBAMs, docs/measurements/2026-12-01/run23.)
    """
    n, dp, hp, wp, c = _cbam_geometry(x, bias)
    if logits.shape != (n, dp - 2, hp - 2, wp - 2):
        raise ValueError(f"logits shape {tuple(logits.shape)} does not match buffer {(n, dp, hp, wp, c)}")
    if x_border not in (0, 1):
        raise ValueError(f"x_border must be 0 or 1, got {x_border}")
    cp, wo2, lpb, grid = _pass_launch(n, dp, hp, wp - 2, c, block_m)
    out = torch.empty((n, dp, hp, wp - 2 + 2 * x_border, c), device=x.device, dtype=x.dtype)
    _cbam_apply_kernel[(grid,)](x, _bias_arg(bias, c, x), logits.contiguous(), gate.float().contiguous(), out,
                                n * dp * hp, dp, hp, wp, c, cp, wo2, lpb, naslung, bias is not None, x_border)
    return out


def to_padded(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, D, H, W) input -> the padded NDHWC buffer (N, D+2, H+2, W+2, 1) in ``dtype``, one pass."""
    n, c, d, h, w = x.shape
    if c != 1:
        raise ValueError(f"expected one input channel, got {c}")
    return bias_act_pad(x.contiguous().view(n, d, h, w, 1), None, relu=False, dtype=dtype)


def interior(x: torch.Tensor) -> torch.Tensor:
    """The unpadded (N, D, H, W, C) view of a padded buffer."""
    return x[:, 1:-1, 1:-1, 1:-1, :]
