"""A skipped test must never hide a broken install in CI.

``pytest.importorskip("nni")`` is right on a developer's box that lacks an optional tool, but a
pinned dependency (requirements.txt) that fails to import in CI is a broken environment, and a
skip would report it green. With ``CI`` set to a true value (``CI=true``, as GitHub Actions,
GitLab and most runners do), these hooks turn a skip that comes from failing to import a pinned
module into a failure that names the module. Outside CI nothing changes.

Triton is the exception: it is pinned for the GPU box only (the CPU box does not install it), so a
missing ``triton`` fails in CI only where CUDA is available, or when ``NASLUNG_REQUIRE_TRITON=1``.

Loaded by ``tests/conftest.py``; tests/test_pinned_deps.py runs it with pytester.
"""
from __future__ import annotations

import os
import re

import pytest

# import names of the pinned packages in requirements.txt (besides triton, see above)
PINNED = frozenset({
    "torch", "numpy", "scipy", "SimpleITK", "pylidc", "nni", "pytorch_lightning", "captum", "sklearn",
    "matplotlib", "grpc", "grpc_tools", "grpc_health", "grpc_reflection", "google", "prometheus_client",
    "safetensors", "tqdm", "yaml", "pydicom", "hypothesis",
})
GPU_ONLY = frozenset({"triton"})
_IMPORT_SKIP = re.compile(r"could not import '([A-Za-z0-9_.]+)'")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _triton_required() -> bool:
    if os.environ.get("NASLUNG_REQUIRE_TRITON", "").strip() in ("1", "true", "yes"):
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def pinned_module_missing(message: str) -> str | None:
    """The pinned module an ``importorskip`` skip message names, if it must not be skipped here."""
    m = _IMPORT_SKIP.search(message or "")
    if not m:
        return None
    top = m.group(1).split(".")[0]
    if top in PINNED or (top in GPU_ONLY and _triton_required()):
        return m.group(1)
    return None


def _skip_message(rep) -> str:
    lr = rep.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2])
    return str(lr)


def _fail(rep, module: str) -> None:
    rep.outcome = "failed"
    rep.longrepr = (f"CI: pinned dependency {module!r} cannot be imported, and importorskip would have hidden "
                    f"it as a skip ({_skip_message(rep)}). Fix the environment (make venv / pip install -r "
                    f"requirements.txt); see tests/pinned_deps.py.")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and in_ci():
        module = pinned_module_missing(_skip_message(rep))
        if module:
            _fail(rep, module)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and in_ci():  # a module-level importorskip skips the whole file at collection
        module = pinned_module_missing(_skip_message(rep))
        if module:
            _fail(rep, module)
