"""Cases for test_ensemble_triton.py, run in a child process with TRITON_INTERPRET=1 (Triton reads it
at import, so the parent test process cannot switch it on for itself). Exits non-zero on failure.

    TRITON_INTERPRET=1 python tests/ensemble/triton_interp_cases.py conv|split|xrun|shortcut|fold|cbam|engine
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from naslung.ensemble import kernels as K  # noqa: E402


def _padded(x: torch.Tensor) -> torch.Tensor:
    """(N, C, D, H, W) -> padded NDHWC with a zero border."""
    return F.pad(x, (1, 1, 1, 1, 1, 1)).permute(0, 2, 3, 4, 1).contiguous()


def _each_raises_value_error(*calls) -> None:
    for call in calls:
        try:
            call()
        except ValueError:
            continue
        raise AssertionError(f"expected a ValueError from {call}")


def _check_border_zero(out: torch.Tensor) -> None:
    inner = torch.zeros_like(out, dtype=torch.bool)
    inner[:, 1:-1, 1:-1, 1:-1] = True
    assert (out[~inner] == 0).all(), "border not zero"


def case_conv() -> None:
    g = torch.Generator().manual_seed(0)
    # (cin, cout, k, stride, spatial): the stem, a strided conv, a 1x1 shortcut, odd channel counts,
    # a width that is not a power of two, and several output-channel tiles
    for cin, cout, k, stride, size in [(1, 4, 3, 1, 6), (4, 4, 3, 2, 6), (4, 8, 1, 1, 5), (3, 5, 3, 1, (4, 5, 7)),
                                       (16, 16, 3, 1, 4), (8, 136, 3, 1, 3)]:
        d, h, w = size if isinstance(size, tuple) else (size,) * 3
        x = torch.rand(2, cin, d, h, w, generator=g) - 0.3
        wt = torch.randn(cout, cin, k, k, k, generator=g) * 0.3
        b = torch.randn(cout, generator=g)
        ref = torch.relu(F.conv3d(x, wt, b, stride, k // 2))
        p = K.pack_conv(wt, b, stride, k // 2, torch.float32)
        out = K.conv3d(_padded(x), p)
        _check_border_zero(out)
        got = K.interior(out).permute(0, 4, 1, 2, 3)
        err = (got - ref).abs().max().item()
        assert got.shape == ref.shape and err < 1e-4, (cin, cout, k, stride, size, err)
    # residual in the epilogue
    x = torch.rand(2, 4, 5, 5, 5, generator=g)
    wt, b = torch.randn(4, 4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    res = torch.rand(2, 4, 5, 5, 5, generator=g)
    p = K.pack_conv(wt, b, 1, 1, torch.float32)
    out = K.conv3d(_padded(x), p, residual=_padded(res))
    ref = torch.relu(F.conv3d(x, wt, b, 1, 1)) + res
    err = (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item()
    assert err < 1e-4, err
    _each_raises_value_error(lambda: K.conv3d(_padded(torch.rand(2, 12, 5, 5, 5)), p),  # wrong channel count
                             lambda: K.pack_conv(torch.randn(4, 4, 5, 5, 5), None, 1, 2, torch.float32))
    print("conv ok")


def case_split() -> None:
    """Several members' first convs as one launch, each member's channels in its own buffer."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 5, 6, 7, generator=g)
    wt, b = torch.randn(12, 1, 3, 3, 3, generator=g), torch.randn(12, generator=g)
    out = K.conv3d(_padded(x), K.pack_conv(wt, b, 1, 1, torch.float32), out_split=4)
    assert out.shape == (3, 2, 7, 8, 9, 4), out.shape
    ref = torch.relu(F.conv3d(x, wt, b, 1, 1))
    for i in range(3):
        _check_border_zero(out[i])
        err = (K.interior(out[i]).permute(0, 4, 1, 2, 3) - ref[:, 4 * i:4 * i + 4]).abs().max().item()
        assert err < 1e-4, (i, err)
    _each_raises_value_error(lambda: K.conv3d(_padded(x), K.pack_conv(wt, b, 1, 1, torch.float32), out_split=5))
    # without x border (what a folded conv reads with x_border=0): lines W voxels long, z/y border zero
    out = K.conv3d(_padded(x), K.pack_conv(wt, b, 1, 1, torch.float32), out_split=4, x_border=0)
    assert out.shape == (3, 2, 7, 8, 7, 4), out.shape
    assert (out[:, :, [0, -1]] == 0).all() and (out[:, :, :, [0, -1]] == 0).all()
    err = (out[:, :, 1:-1, 1:-1].permute(1, 0, 5, 2, 3, 4).reshape(2, 12, 5, 6, 7) - ref).abs().max().item()
    assert err < 1e-4, err
    p2 = K.pack_conv(wt, b, 1, 1, torch.float32, xb=2)
    _each_raises_value_error(lambda: K.conv3d(_padded(x), p2, x_border=0),  # one-voxel rows only
                             lambda: K.conv3d(_padded(x), K.pack_conv(wt, b, 1, 1, torch.float32), x_border=2))
    print("split ok")


def case_xrun() -> None:
    """The 2-/4-/8-voxel-row kernel (banded weight along x) == conv3d: widths that are not a
    multiple of the row (ragged last row), several column tiles, residual, padded channel counts."""
    g = torch.Generator().manual_seed(3)
    for cin, cout, size, xb, res in [(16, 16, 4, 2, True), (8, 16, (3, 4, 5), 2, False), (4, 8, (3, 3, 5), 4, True),
                                     (3, 5, (2, 3, 3), 4, False), (64, 128, 2, 2, True), (16, 8, 3, 8, False)]:
        d, h, w = size if isinstance(size, tuple) else (size,) * 3
        x = torch.rand(2, cin, d, h, w, generator=g) - 0.3
        wt = torch.randn(cout, cin, 3, 3, 3, generator=g) * 0.3
        b = torch.randn(cout, generator=g)
        ref = torch.relu(F.conv3d(x, wt, b, 1, 1))
        r = torch.rand(ref.shape, generator=g) if res else None
        p = K.pack_conv(wt, b, 1, 1, torch.float32, xb=xb)
        assert p.xb == xb
        out = K.conv3d(_padded(x), p, residual=None if r is None else _padded(r))
        _check_border_zero(out)
        got = K.interior(out).permute(0, 4, 1, 2, 3)
        err = (got - (ref if r is None else ref + r)).abs().max().item()
        assert got.shape == ref.shape and err < 1e-4, (cin, cout, size, xb, err)
    wt = torch.randn(4, 4, 3, 3, 3, generator=g)
    _each_raises_value_error(lambda: K.pack_conv(wt, None, 2, 1, torch.float32, xb=2),  # strided
                             lambda: K.pack_conv(wt, None, 1, 1, torch.float32, xb=3),  # not a power of two
                             lambda: K.pack_conv(torch.randn(4, 4, 1, 1, 1), None, 1, 0, torch.float32, xb=2),
                             lambda: K.conv3d(_padded(torch.rand(1, 4, 4, 4, 4)),
                                              K.pack_conv(wt, None, 1, 1, torch.float32, xb=2), out_split=2))
    print("xrun ok")


def case_shortcut() -> None:
    """A residual block's 1x1 shortcut fused into the x-run conv's epilogue (rows of 2, 4, 8
    voxels, ragged widths) and into the folded conv's epilogue (programs spanning several crops);
    mismatched packings and the one-voxel-row kernel are refused."""
    from naslung.ensemble import fold

    g = torch.Generator().manual_seed(4)

    def block(cin, cout, cs, size, n=2):
        d, h, w = size if isinstance(size, tuple) else (size,) * 3
        hin, y = torch.relu(torch.randn(n, cs, d, h, w, generator=g)), torch.rand(n, cin, d, h, w, generator=g)
        wt, b = torch.randn(cout, cin, 3, 3, 3, generator=g) * 0.3, torch.randn(cout, generator=g)
        ws, bs = torch.randn(cout, cs, 1, 1, 1, generator=g), torch.randn(cout, generator=g)
        ref = torch.relu(F.conv3d(y, wt, b, 1, 1)) + torch.relu(F.conv3d(hin, ws, bs))
        return hin, y, wt, b, ws, bs, ref

    for cin, cout, cs, size, xb in [(16, 16, 8, 4, 2), (16, 16, 8, (3, 4, 5), 2), (8, 32, 16, (3, 3, 6), 4),
                                    (3, 5, 7, (3, 4, 5), 8)]:
        hin, y, wt, b, ws, bs, ref = block(cin, cout, cs, size)
        p = K.pack_conv(wt, b, 1, 1, torch.float32, xb=xb)
        out = K.conv3d(_padded(y), p, shortcut=(_padded(hin), K.pack_shortcut(ws, bs, xb, p.weight.shape[1],
                                                                                torch.float32)))
        _check_border_zero(out)
        err = (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item()
        assert err < 1e-4, (cin, cout, cs, size, xb, err)
    for cin, cout, cs, size, n in [(4, 4, 4, (3, 4, 5), 3), (8, 16, 8, 4, 7), (32, 32, 16, 2, 3)]:
        hin, y, wt, b, ws, bs, ref = block(cin, cout, cs, size, n)
        fc = fold.pack_folded(wt, b, 1, 1, torch.float32)
        ps = K.pack_shortcut(ws, bs, 1, K.shortcut_columns(cout), torch.float32)
        out = K.bias_act_pad(fold.folded_conv(_padded(y), fc), fc.bias, shortcut=(_padded(hin), ps))
        _check_border_zero(out)
        assert (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item() < 1e-4, (cin, cout, size)
    hin, y, wt, b, ws, bs, ref = block(4, 4, 4, 3)
    p1, p2 = K.pack_conv(wt, b, 1, 1, torch.float32), K.pack_conv(wt, b, 1, 1, torch.float32, xb=2)
    _each_raises_value_error(
        lambda: K.conv3d(_padded(y), p1, shortcut=(_padded(hin), K.pack_shortcut(ws, bs, 1, 16, torch.float32))),
        lambda: K.conv3d(_padded(y), p2, shortcut=(_padded(hin), K.pack_shortcut(ws, bs, 4, 32, torch.float32))),
        lambda: K.conv3d(_padded(y), p2, shortcut=(_padded(hin)[..., :2], K.pack_shortcut(ws, bs, 2, 16,
                                                                                          torch.float32))),
        lambda: K.pack_shortcut(torch.randn(4, 4, 3, 3, 3), None, 1, 16, torch.float32))  # not 1x1x1
    print("shortcut ok")


def case_fold() -> None:
    """x-folded cuDNN-style 2D convs + the bias/ReLU/residual/padding epilogue == conv3d."""
    from naslung.ensemble import fold

    g = torch.Generator().manual_seed(2)
    for cin, cout, k, stride, size, res in [(4, 4, 3, 1, 6, False), (4, 4, 3, 2, 6, False), (2, 8, 3, 1, (4, 5, 7), True),
                                            (8, 16, 3, 2, (5, 6, 7), False), (3, 5, 3, 1, 3, True)]:
        d, h, w = size if isinstance(size, tuple) else (size,) * 3
        x = torch.rand(2, cin, d, h, w, generator=g) - 0.3
        wt = torch.randn(cout, cin, k, k, k, generator=g) * 0.3
        b = torch.randn(cout, generator=g)
        ref = torch.relu(F.conv3d(x, wt, b, stride, k // 2))
        r = torch.rand(ref.shape, generator=g) if res else None
        fc = fold.pack_folded(wt, b, stride, k // 2, torch.float32)
        out = K.bias_act_pad(fold.folded_conv(_padded(x), fc), fc.bias, residual=None if r is None else _padded(r))
        _check_border_zero(out)
        got = K.interior(out).permute(0, 4, 1, 2, 3)
        err = (got - (ref if r is None else ref + r)).abs().max().item()
        assert got.shape == ref.shape and err < 1e-4, (cin, cout, stride, size, err)
        if r is None:  # a chain of folded convs: the epilogue writes no x border, the next fold reads none
            unb = K.bias_act_pad(fold.folded_conv(_padded(x), fc), fc.bias, x_border=0)
            assert torch.equal(unb, out[:, :, :, 1:-1]), (cin, cout, stride, size)
            fc2 = fold.pack_folded(torch.randn(3, cout, 3, 3, 3, generator=g), None, 1, 1, torch.float32)
            y2 = fold.folded_conv(unb, fc2, x_border=0)
            assert (y2 - fold.folded_conv(out, fc2)).abs().max().item() < 1e-4
    _each_raises_value_error(lambda: K.bias_act_pad(torch.rand(1, 2, 2, 2, 4), None, x_border=0,
                                                    residual=torch.rand(1, 4, 4, 2, 4)),
                             lambda: K.bias_act_pad(torch.rand(1, 2, 2, 2, 4), None, x_border=2))
    print("fold ok")  # fold's own input checks: tests/ensemble/test_ensemble_fold.py (no Triton needed)


def case_cbam() -> None:
    """Channel statistics, descriptor, folded gate conv and output pass == CBAM3d (both variants), and
    every pass on a folded conv's raw output (bias + ReLU applied as loaded)."""
    from naslung.ensemble import fold
    from naslung.models.cbam import CBAM3d

    torch.manual_seed(0)
    for variant, c, size in [("naslung", 4, 6), ("naslung", 6, (4, 5, 7)), ("original", 8, 5)]:
        d, h, w = size if isinstance(size, tuple) else (size,) * 3
        m = CBAM3d(c, variant).eval()
        x = torch.relu(torch.randn(2, c, d, h, w))
        with torch.no_grad():
            ref = m(x)
            gate = m.channel_gate(x)[:, :, 0, 0, 0]
        xp = _padded(x)
        total, mx = K.channel_stats(xp, parts=3)
        assert torch.allclose(total, x.sum(dim=(2, 3, 4)), atol=1e-4), "channel sums"
        assert torch.equal(mx, x.amax(dim=(2, 3, 4))), "channel max"
        cg = m.channel_gate
        g = K.channel_gate(total, mx, d * h * w, cg.fc1.weight.detach(), cg.fc2.weight.detach(),
                           relu=variant == "original", softmax=variant == "naslung")
        assert torch.allclose(g, gate, atol=1e-6), (variant, (g - gate).abs().max().item())
        desc = K.cbam_desc(xp, gate)
        assert desc.shape == (2, d + 2, h + 2, w, 2), desc.shape
        assert (desc[:, [0, -1]] == 0).all() and (desc[:, :, [0, -1]] == 0).all(), "z/y border not zero"
        weight = m.spatial_gate.conv.weight.detach()
        gate_conv = fold.pack_folded(weight, None, 1, weight.shape[-1] // 2, torch.float32)
        logits = fold.folded_conv(desc, gate_conv, x_border=0)[..., 0]
        out = K.cbam_apply(xp, logits, gate, naslung=variant == "naslung")
        _check_border_zero(out)
        err = (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item()
        assert err < 1e-5, (variant, c, err)
        # every pass on a folded conv's raw output: relu(y + bias) applied as loaded (some y < -bias)
        bias = torch.randn(c)
        y = torch.randn(2, d, h, w, c)
        xr = torch.relu(y + bias).permute(0, 4, 1, 2, 3)
        with torch.no_grad():
            ref_r, gate_r = m(xr), m.channel_gate(xr)[:, :, 0, 0, 0]
        total_r, mx_r = K.channel_stats(y, parts=2, bias=bias)
        assert torch.allclose(total_r, xr.sum(dim=(2, 3, 4)), atol=1e-4) and torch.equal(mx_r, xr.amax(dim=(2, 3, 4)))
        desc_r = K.cbam_desc(y, gate_r, bias=bias)
        assert torch.allclose(desc_r, K.cbam_desc(_padded(xr), gate_r), atol=1e-6), "raw descriptor"
        logits_r = fold.folded_conv(desc_r, gate_conv, x_border=0)[..., 0]
        out_r = K.cbam_apply(y, logits_r, gate_r, naslung=variant == "naslung", bias=bias)
        _check_border_zero(out_r)
        assert (K.interior(out_r).permute(0, 4, 1, 2, 3) - ref_r).abs().max().item() < 1e-5, (variant, "raw")
        # output without x border (read by a folded conv), from a padded or a raw input
        assert torch.equal(K.cbam_apply(xp, logits, gate, naslung=variant == "naslung", x_border=0), out[:, :, :, 1:-1])
        unb = K.cbam_apply(y, logits_r, gate_r, naslung=variant == "naslung", bias=bias, x_border=0)
        assert torch.equal(unb, out_r[:, :, :, 1:-1])
    _each_raises_value_error(lambda: K.cbam_apply(xp, desc, gate, naslung=True),  # a descriptor is not logits
                             lambda: K.cbam_apply(y, logits[:, 1:], gate, naslung=True, bias=bias),
                             lambda: K.channel_stats(y, bias=torch.randn(c - 1)))
    print("cbam ok")


def case_engine() -> None:
    from naslung.ensemble.engine import FastEnsemble
    from naslung.ensemble.naive import Ensemble
    from naslung.models import build_model
    from naslung.models.config import ModelConfig

    torch.manual_seed(0)
    cfgs = [ModelConfig(stages=((4, 8), (16,)), in_size=8, name="a"),
            ModelConfig(stages=((8,),), in_size=8, name="b", cbam="none", head="softmax"),
            ModelConfig(stages=((16,), (4,)), in_size=8, name="c", cbam="original")]
    models = []
    for cfg in cfgs:
        m = build_model(cfg)
        for mod in m.modules():  # non-trivial BatchNorm statistics, so folding is exercised
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
        models.append(m.eval())
    ens = Ensemble(models, names=[c.name for c in cfgs], configs=cfgs, rule="mean")
    x = torch.rand(3, 1, 8, 8, 8)
    # the default plan (folded, 2-voxel rows and one-voxel rows mixed), no 2-voxel rows, nothing folded;
    # the stem's CBAM on its folded conv's raw output or not
    from naslung.ensemble import fold

    stats_on_raw, unbordered_reads = [], []
    stats, folded_conv = K.channel_stats, fold.folded_conv
    K.channel_stats = lambda h, parts=None, bias=None: stats_on_raw.append(bias is not None) or stats(h, parts, bias)
    fold.folded_conv = lambda h, fc, x_border=1: (unbordered_reads.append(x_border == 0 and fc.cout > 1)  # not a gate
                                                  or folded_conv(h, fc, x_border))
    for fold_max_cin, xrun, fused, raw, unb in ((8, True, True, True, True), (8, True, False, False, False),
                                                (8, False, True, True, False), (0, False, True, True, True)):
        fast = FastEnsemble(ens, "cpu", backend="triton", fold_max_cin=fold_max_cin, xrun=xrun,
                            fuse_shortcut=fused, raw_cbam=raw, fold_unbordered=unb)
        assert fast.backend == "triton" and fast._shared_stem is not None
        stats_on_raw.clear()
        unbordered_reads.clear()
        err = (fast.member_proba(x) - ens.member_proba(x)).abs().max().item()
        assert err < 1e-5, (fold_max_cin, xrun, fused, raw, unb, err)
        # members a and c have a stem CBAM; only a folded stem conv leaves a raw output to read
        assert any(stats_on_raw) == (raw and fold_max_cin > 0), stats_on_raw
        # buffers read only by folded convs lose their x border: the first convs' outputs (every
        # member's second conv is folded), the conv1 outputs of a's two and b's one all-folded block,
        # a's and c's stem CBAM outputs (each read by a folded strided conv; b has no CBAM)
        assert all(m.stem_reads_unbordered(8) for _, m in fast.groups) == (fold_max_cin > 0 and unb)
        assert sum(unbordered_reads) == (3 + 3 + 2 if fold_max_cin and unb else 0), unbordered_reads
        err = (fast.predict_proba(x) - ens.predict_proba(x)).abs().max().item()
        assert err < 1e-5, (fold_max_cin, xrun, fused, err)
        used = {type(p).__name__ + str(getattr(p, "xb", "")) for _, m in fast.groups for c in _member_convs(m)
                for p in c._packed.values()}
        expect = {(8, True): {"FoldedConv", "PackedConv1", "PackedConv2"}, (8, False): {"FoldedConv", "PackedConv1"},
                  (0, False): {"PackedConv1"}}[(fold_max_cin, xrun)]
        assert expect <= used, used
        assert (xrun or "PackedConv2" not in used) and (fold_max_cin or "FoldedConv" not in used), used
    K.channel_stats, fold.folded_conv = stats, folded_conv
    # members whose stems differ in width run their first convs one by one
    wide = ModelConfig(stages=((8,),), stem_width=8, in_size=8, name="w")
    mixed = Ensemble([models[0], build_model(wide).eval()], names=["a", "w"], configs=[cfgs[0], wide], rule="mean")
    fast = FastEnsemble(mixed, "cpu", backend="triton")
    assert fast._shared_stem is None
    err = (fast.member_proba(x) - mixed.member_proba(x)).abs().max().item()
    assert err < 1e-5, err
    # a layer the kernels do not cover (a 5x5x5 conv) is refused with the reason, not run wrong
    odd = build_model(cfgs[0]).eval()
    odd.stem[1][0] = torch.nn.Conv3d(4, 4, 5, padding=2, bias=False)
    try:
        FastEnsemble(Ensemble([odd], names=["odd"], configs=[cfgs[0]], rule="mean"), "cpu", backend="triton")
    except ValueError as e:
        assert "cannot run these members" in str(e), e
    else:
        raise AssertionError("a 5x5x5 conv was accepted by the Triton backend")
    print("engine ok")


def _member_convs(m) -> list:
    convs = list(m.stem)
    for down, blocks, _ in m.stages:
        convs += [down] + [c for block in blocks for c in block]
    return convs


if __name__ == "__main__":
    {"conv": case_conv, "split": case_split, "xrun": case_xrun, "shortcut": case_shortcut, "fold": case_fold,
     "cbam": case_cbam, "engine": case_engine}[sys.argv[1]]()
