"""Fixtures for the explanation tests: tiny untrained models, a tiny bundle, a crop with geometry,
and one tiny model trained (seconds) on the planted-evidence toy set, shared by the module."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from naslung.data.spec import CropSpec
from naslung.models import build_model, get_config

SPEC16 = CropSpec(size=16)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(get_config("tiny")).eval()


@pytest.fixture
def blob_crop() -> np.ndarray:
    """A 16^3 HU crop: a dense sphere off-centre in noisy lung."""
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:16, :16, :16]
    r = np.sqrt((zz - 8) ** 2 + (yy - 6) ** 2 + (xx - 9) ** 2)
    return np.where(r < 3.5, 30, -820).astype(np.int16) + rng.normal(0, 25, r.shape).astype(np.int16)


@pytest.fixture
def tiny_bundle(tmp_path) -> Path:
    from naslung.ensemble import BundleMember, save_bundle

    torch.manual_seed(0)
    members = [BundleMember(f"tiny-{i}", get_config("tiny"), build_model(get_config("tiny")).state_dict())
               for i in range(2)]
    return save_bundle(tmp_path / "bundle", members, SPEC16, rule="weighted", weights=[0.75, 0.25])


@pytest.fixture(scope="session")
def planted():
    """(trained model, PlantedSet, test indices, metrics): the "tiny" config (A-Softmax head) trained
    with naslung.train on the planted toy set, fold 0 of 4."""
    from naslung.data.dataset import PreparedDataset
    from naslung.data.folds import assign_folds
    from naslung.explain.faithfulness import make_planted_set
    from naslung.train import TrainConfig, train_fold

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ps = make_planted_set(n=192, size=16, seed=0)
    rows = [{"id": f"planted-{i}", "patient_id": f"P{i}", "label": int(y), "diameter_mm": 4.0, "source": "planted"}
            for i, y in enumerate(ps.labels)]
    ds = PreparedDataset(ps.crops, rows, SPEC16, "planted")
    ds.set_folds(assign_folds(ds.labels, ds.patient_ids, k=4, seed=0))
    # No augmentation: flips would move the corner the label depends on.
    cfg = TrainConfig(epochs=15, batch_size=16, lr=3e-3, augment=False, device="cpu", patience=0,
                      min_epochs=1, seed=0)
    res = train_fold(ds, get_config("tiny"), cfg, 0, progress=False)
    model = build_model(get_config("tiny"))
    model.load_state_dict(res.state_dict)
    model.eval()
    test = np.flatnonzero(ds.folds == 0)
    return model, ps, test, res.test_metrics
