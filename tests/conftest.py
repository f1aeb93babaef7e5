"""Shared fixtures: tiny prepared datasets built in well under a second, and the real-data path."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naslung.data.dataset import PreparedDataset
from naslung.data.folds import assign_folds
from naslung.data.spec import CropSpec

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__import__("os").environ.get("NASLUNG_SHARED_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    """The suite never writes into the user's ~/nni-experiments (NNI's experiment registry, a fixed path
    under HOME in NNI 3.0): HOME points to a throw-away directory for the whole run, child processes
    included. matplotlib keeps its real cache (rebuilding the font cache costs seconds)."""
    import os
    import tempfile

    if os.environ.get("NASLUNG_TEST_REAL_HOME"):
        return  # a nested pytest (or a re-configure): already isolated
    real_home = os.path.expanduser("~")
    os.environ["NASLUNG_TEST_REAL_HOME"] = real_home
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(real_home, ".cache", "matplotlib"))
    config._naslung_home = tempfile.TemporaryDirectory(prefix="naslung-test-home-")
    os.environ["HOME"] = config._naslung_home.name


def pytest_unconfigure(config):
    home = getattr(config, "_naslung_home", None)
    if home is not None:
        home.cleanup()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    # 2-core CI: one intra-op thread per test keeps parallel tests from thrashing.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


def make_blob_dataset(n: int = 48, size: int = 16, n_patients: int = 16, k: int = 4,
                      seed: int = 0) -> PreparedDataset:
    """A learnable toy set: malignant crops hold a large dense sphere, benign a small faint one."""
    rng = np.random.default_rng(seed)
    spec = CropSpec(size=size)
    zz, yy, xx = np.mgrid[:size, :size, :size] - (size - 1) / 2
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    labels = np.arange(n) % 2
    crops = np.empty((n, size, size, size), dtype=np.int16)
    rows = []
    for i, y in enumerate(labels):
        radius = (0.3 if y else 0.12) * size * rng.uniform(0.85, 1.15)
        hu = np.where(r < radius, 40 if y else -300, -850) + rng.normal(0, 30, r.shape)
        crops[i] = hu.astype(np.int16)
        rows.append({"id": f"toy-{i:03d}", "patient_id": f"P{i % n_patients:02d}", "label": int(y),
                     "diameter_mm": 2 * radius, "source": "toy"})
    ds = PreparedDataset(crops, rows, spec, "toy")
    ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=k, seed=seed))
    return ds


@pytest.fixture
def tiny_dataset() -> PreparedDataset:
    return make_blob_dataset()


@pytest.fixture
def tiny_dataset_dir(tmp_path, tiny_dataset) -> Path:
    return tiny_dataset.save(tmp_path / "tiny_data")


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "lidc-voi" / "labels.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (set NASLUNG_SHARED_DATA)")
    return SHARED_DATA
