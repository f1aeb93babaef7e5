"""In CI a missing pinned dependency fails; on a developer's box it still skips (tests/pinned_deps.py)."""
from __future__ import annotations

import textwrap

import pytest

import pinned_deps

INNER = textwrap.dedent("""
    import sys
    import pytest

    def test_missing_pinned():
        sys.modules["nni"] = None          # as if the pinned nni failed to install
        try:
            pytest.importorskip("nni")
        finally:
            del sys.modules["nni"]

    def test_missing_optional():
        pytest.importorskip("surely_not_a_module_naslung_uses")
""")
INNER_MODULE_LEVEL = textwrap.dedent("""
    import sys
    import pytest
    sys.modules["captum"] = None
    try:
        pytest.importorskip("captum")
    finally:
        del sys.modules["captum"]

    def test_never_runs():
        pass
""")


class _Outcomes:
    def __init__(self) -> None:
        self.by_id: dict[str, str] = {}

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            self.by_id[report.nodeid.split("::")[-1]] = report.outcome

    def pytest_collectreport(self, report):
        if report.outcome != "passed":
            self.by_id[report.nodeid.rsplit("/", 1)[-1].rsplit("_", 1)[0]] = report.outcome


def _run(tmp_path, monkeypatch, ci: str | None) -> dict[str, str]:
    tag = "ci" if ci else "dev"  # distinct module names: the runs share this process's sys.modules
    (tmp_path / f"test_inner_{tag}.py").write_text(INNER)
    (tmp_path / f"test_inner_module_{tag}.py").write_text(INNER_MODULE_LEVEL)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    got = _Outcomes()
    pytest.main([str(tmp_path), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                 "--import-mode=importlib", "--continue-on-collection-errors"], plugins=[pinned_deps, got])
    return got.by_id


def test_ci_turns_skips_of_pinned_modules_into_failures(tmp_path, monkeypatch):
    out = _run(tmp_path, monkeypatch, "true")
    assert out["test_missing_pinned"] == "failed"
    assert out["test_inner_module"] == "failed"          # module-level importorskip at collection
    assert out["test_missing_optional"] == "skipped"        # not pinned: a skip is honest


def test_outside_ci_skips_stay_skips(tmp_path, monkeypatch):
    out = _run(tmp_path, monkeypatch, None)
    assert out["test_missing_pinned"] == "skipped"
    assert out["test_inner_module"] == "skipped"
    assert out["test_missing_optional"] == "skipped"


def test_triton_is_required_only_with_cuda_or_when_asked(monkeypatch):
    msg = "could not import 'triton': No module named 'triton'"
    monkeypatch.setenv("NASLUNG_REQUIRE_TRITON", "1")
    assert pinned_deps.pinned_module_missing(msg) == "triton"
    monkeypatch.delenv("NASLUNG_REQUIRE_TRITON")
    import torch

    assert (pinned_deps.pinned_module_missing(msg) == "triton") == torch.cuda.is_available()
    assert pinned_deps.pinned_module_missing("could not import 'captum.attr': boom") == "captum.attr"
