"""Cases for test_ensemble_triton.py, run in a child process with TRITON_INTERPRET=1 (Triton reads it
at import, so the parent test process cannot switch it on for itself). Exits non-zero on failure.

    TRITON_INTERPRET=1 python tests/ensemble/triton_interp_cases.py conv|cbam|engine
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
    # residual in the epilogue, and reading a channel slice of a wider buffer (shared stems)
    x = torch.rand(2, 12, 5, 5, 5, generator=g)
    wt, b = torch.randn(4, 4, 3, 3, 3, generator=g), torch.randn(4, generator=g)
    res = torch.rand(2, 4, 5, 5, 5, generator=g)
    p = K.pack_conv(wt, b, 1, 1, torch.float32)
    out = K.conv3d(_padded(x), p, cin_offset=8, residual=_padded(res))
    ref = torch.relu(F.conv3d(x[:, 8:12], wt, b, 1, 1)) + res
    err = (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item()
    assert err < 1e-4, err
    for bad in (lambda: K.conv3d(_padded(x), p, cin_offset=9),
                lambda: K.pack_conv(torch.randn(4, 4, 5, 5, 5), None, 1, 2, torch.float32)):
        try:
            bad()
        except ValueError:
            continue
        raise AssertionError("expected a ValueError")
    print("conv ok")


def case_cbam() -> None:
    from naslung.models.cbam import CBAM3d

    torch.manual_seed(0)
    for variant, c, size in [("naslung", 4, 6), ("naslung", 6, 5), ("original", 8, 5)]:
        m = CBAM3d(c, variant).eval()
        x = torch.relu(torch.randn(2, c, size, size, size))
        with torch.no_grad():
            ref = m(x)
            gate = m.channel_gate(x)[:, :, 0, 0, 0]
        out = K.cbam_spatial(_padded(x), gate, m.spatial_gate.conv.weight, naslung=variant == "naslung")
        _check_border_zero(out)
        err = (K.interior(out).permute(0, 4, 1, 2, 3) - ref).abs().max().item()
        assert err < 1e-5, (variant, c, err)
    print("cbam ok")


def case_engine() -> None:
    from naslung.ensemble.engine import FastEnsemble
    from naslung.ensemble.naive import Ensemble
    from naslung.models import build_model
    from naslung.models.config import ModelConfig

    torch.manual_seed(0)
    cfgs = [ModelConfig(stages=((4, 8), (16,)), in_size=8, name="a"),
            ModelConfig(stages=((8,),), stem_width=8, in_size=8, name="b", cbam="none", head="softmax")]
    models = []
    for cfg in cfgs:
        m = build_model(cfg)
        for mod in m.modules():  # non-trivial BatchNorm statistics, so folding is exercised
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
        models.append(m.eval())
    ens = Ensemble(models, names=[c.name for c in cfgs], configs=cfgs, rule="mean")
    fast = FastEnsemble(ens, "cpu", backend="triton")
    assert fast.backend == "triton" and fast._shared_stem is not None
    x = torch.rand(3, 1, 8, 8, 8)
    err = (fast.member_proba(x) - ens.member_proba(x)).abs().max().item()
    assert err < 1e-5, err
    err = (fast.predict_proba(x) - ens.predict_proba(x)).abs().max().item()
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


if __name__ == "__main__":
    {"conv": case_conv, "cbam": case_cbam, "engine": case_engine}[sys.argv[1]]()
