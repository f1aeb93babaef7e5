"""The field-of-view guard lives in the crop spec: every path that normalises a crop applies it."""
import dataclasses

import numpy as np
import pytest
import torch

from naslung.data.dataset import DatasetError
from naslung.data.spec import CropSpec, parse_fov

SPEC = CropSpec(size=32, fov_mm=(24, 24, 6))


def test_normalize_keeps_only_the_box():
    hu = np.full((2, 32, 32, 32), 100, dtype=np.int16)
    x = SPEC.normalize(hu)
    box = SPEC.fov_mask()
    assert box.sum() == 7 * 25 * 25  # |offset| <= 3 mm in z, <= 12 mm in y and x, at 1 mm
    assert (x[:, box] > 0.7).all() and (x[:, ~box] == 0).all()
    t = SPEC.normalize_torch(torch.from_numpy(hu))
    assert torch.equal(t, torch.from_numpy(x))
    assert np.array_equal(SPEC.apply_fov(hu)[:, ~box], np.full((2, (~box).sum()), -1000))


def test_spec_without_box_is_unchanged_and_round_trips():
    plain = CropSpec()
    hu = np.random.default_rng(0).integers(-1000, 400, (32, 32, 32)).astype(np.int16)
    assert np.array_equal(plain.normalize(hu), np.clip((hu + 1000) / 1400, 0, 1).astype(np.float32))
    assert CropSpec.from_dict(SPEC.to_dict()) == SPEC and CropSpec.from_dict(plain.to_dict()) == plain
    assert CropSpec.from_dict({k: v for k, v in plain.to_dict().items() if k != "fov_mm"}) == plain  # old bundles


@pytest.mark.parametrize("bad", [(24, 24), (24, 0, 6), (24, float("nan"), 6)])
def test_spec_refuses_bad_boxes(bad):
    with pytest.raises(ValueError, match="fov_mm"):
        CropSpec(fov_mm=bad)


def test_a_box_spec_refuses_crops_of_another_shape():
    with pytest.raises(ValueError, match="field-of-view"):
        SPEC.normalize(np.zeros((16, 16, 16)))


def test_parse_fov():
    assert parse_fov("24,24,6") == (24.0, 24.0, 6.0) and parse_fov(20) == (20.0, 20.0, 20.0)
    with pytest.raises(ValueError):
        parse_fov("a,b")


def test_dataset_with_field_of_view_narrows_but_never_widens(tiny_dataset):
    boxed = tiny_dataset.with_field_of_view((8, 8, 4))
    assert boxed.spec.fov_mm == (8.0, 8.0, 4.0) and boxed.fingerprint() == tiny_dataset.fingerprint()
    assert boxed.with_field_of_view((8, 8, 4)) is not None
    with pytest.raises(DatasetError, match="cannot use"):
        boxed.with_field_of_view((12, 12, 12))


def test_crop_at_world_applies_the_spec_box(tmp_path):
    import SimpleITK as sitk

    from naslung.data.crop import crop_at_world

    img = sitk.GetImageFromArray(np.full((40, 40, 40), 50, dtype=np.int16))
    spec = dataclasses.replace(SPEC)
    crop = crop_at_world(img, (20.0, 20.0, 20.0), spec)
    assert (crop[spec.fov_mask()] == 50).all() and (crop[~spec.fov_mask()] == -1000).all()
