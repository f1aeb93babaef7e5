"""The Triton backend's kernels and engine, on CPU through Triton's interpreter (same kernel code as
on a GPU; fp32 only, since the interpreter has no bf16). GPU runs: bench/gpu/engine_layers.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import triton  # noqa: F401,E402  (pinned in requirements.txt: a broken install must fail, not skip)

CASES = Path(__file__).with_name("triton_interp_cases.py")


@pytest.mark.parametrize("case", ["conv", "split", "xrun", "shortcut", "fold", "cbam", "engine"])
def test_triton_kernels_match_pytorch_under_the_interpreter(case):
    # NumPy >= 2.4 rejects what 2.3 only warns about (an array used as a loop bound in the interpreter)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONWARNINGS="error::DeprecationWarning")
    out = subprocess.run([sys.executable, str(CASES), case], capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{case} ok" in out.stdout


def test_triton_backend_refuses_cpu_without_the_interpreter(monkeypatch):
    from naslung.ensemble.engine import FastEnsemble, triton_backend_usable
    from naslung.ensemble.naive import Ensemble
    from naslung.models import build_model, get_config

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, why = triton_backend_usable(torch.device("cpu"))
    assert not ok and "CUDA" in why
    cfg = get_config("tiny")
    ens = Ensemble([build_model(cfg).eval()], names=["t"], configs=[cfg], rule="mean")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        FastEnsemble(ens, "cpu", backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        FastEnsemble(ens, "cpu", backend="cudnn")
    assert FastEnsemble(ens, "cpu").backend == "torch"  # auto on CPU: the PyTorch path


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("options", [{}, {"xrun": False, "fuse_shortcut": False}, {"fold_max_cin": 0},
                                     {"fold_max_cin": 0, "xrun": False}, {"raw_cbam": False, "fold_unbordered": False}])
def test_triton_engine_on_gpu_matches_fp32_reference(options):
    """bf16 Triton engine with CUDA graphs vs the fp32 reference, on five distinct members: the
    default plan and with its steps off (every kernel path the plan can pick runs somewhere)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from ensemble import make_ensemble, member_configs

    from naslung.ensemble.engine import FastEnsemble

    ens = make_ensemble(member_configs("distinct", 32)).to("cuda")
    fast = FastEnsemble(ens, "cuda", **options)
    assert fast.backend == "triton" and fast.cuda_graphs
    for n in (1, 7, 64):  # several graph shapes, one not a multiple of any block size
        x = torch.rand(n, 1, 32, 32, 32, device="cuda")
        ref = ens.member_proba(x).float()
        assert (fast.member_proba(x) - ref).abs().max().item() <= 1e-2
        assert (fast.predict_proba(x) - ens.predict_proba(x).float()).abs().max().item() <= 1e-2
    x = torch.rand(3, 1, 32, 32, 32, device="cuda")
    a, b = fast.member_proba(x), fast.member_proba(x.clone())
    assert torch.equal(a, b)  # graph replay is deterministic and does not alias its output
    # members on their own streams (small batches) and in turn (large) give the same answers
    assert fast._streams and fast.stream_max_batch >= 3
    in_turn = FastEnsemble(ens, "cuda", stream_max_batch=0, **options)
    assert not in_turn._streams
    assert (in_turn.member_proba(x) - a).abs().max().item() <= 1e-3
    eager = FastEnsemble(ens, "cuda", cuda_graphs=False, **options)  # streams without a graph
    assert (eager.member_proba(x) - a).abs().max().item() <= 1e-3
