"""Request validation: each malformed field gives INVALID_ARGUMENT and a message naming the fault;
valid crops/volumes give exactly the crop the training code would cut."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from naslung.data.spec import CropSpec
from service.client import crop_request, volume_request
from service.generated import nodule_service_pb2 as pb
from service.validation import Limits, RequestError, crop_from_request

from service_testutil import make_crop

SPEC = CropSpec(size=16)


def _err(req, limits=Limits()) -> str:
    with pytest.raises(RequestError) as ei:
        crop_from_request(req, SPEC, limits)
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return ei.value.message


def _crop_req(shape=(16, 16, 16), dtype=pb.DTYPE_INT16, data=None, spacing=()):
    if data is None:
        n = int(np.prod(shape)) if shape else 0
        data = np.zeros(n, "<i2" if dtype == pb.DTYPE_INT16 else "<f4").tobytes()
    return pb.PredictRequest(crop=pb.Crop(voxels=pb.Array3D(shape=list(shape), dtype=dtype, data=data),
                                          spacing=list(spacing)))


def test_ready_crop_passes_through_unchanged():
    crop = make_crop(1)
    out = crop_from_request(crop_request(crop), SPEC)
    assert out.dtype == np.float32 and out.shape == (16, 16, 16)
    np.testing.assert_array_equal(out, crop.astype(np.float32))
    out32 = crop_from_request(crop_request(crop.astype(np.float32), spacing_xyz=(1, 1, 1)), SPEC)
    np.testing.assert_array_equal(out32, crop.astype(np.float32))


def test_no_input():
    assert "no input" in _err(pb.PredictRequest())


def test_voxel_count_does_not_match_shape():
    msg = _err(_crop_req(data=b"\0" * 1000))
    assert "1,000 bytes" in msg and "16x16x16" in msg and "8,192" in msg and "4,096 voxels" in msg


def test_shape_needs_three_positive_dims():
    assert "3 values" in _err(_crop_req(shape=(16, 16)))
    assert "zero dimension" in _err(_crop_req(shape=(16, 0, 16), data=b""))


def test_unsupported_dtype():
    assert "not set" in _err(_crop_req(dtype=pb.DTYPE_UNSPECIFIED, data=b"\0" * 8192))
    assert "dtype 7 is not supported" in _err(_crop_req(dtype=7, data=b"\0" * 8192))


def test_nan_and_inf_are_rejected_with_position():
    a = np.zeros((16, 16, 16), np.float32)
    a[2, 3, 4] = np.nan
    a[5, 5, 5] = np.inf
    msg = _err(crop_request(a))
    assert "2 NaN/Inf" in msg and "(2, 3, 4)" in msg


def test_non_positive_and_malformed_spacing():
    assert "spacing must be positive" in _err(_crop_req(spacing=(1, 0, 1)))
    assert "crop.spacing[2] = -1" in _err(_crop_req(spacing=(1, 1, -1)))
    assert "3 values" in _err(_crop_req(spacing=(1, 1)))
    assert "not a finite number" in _err(_crop_req(spacing=(1, float("nan"), 1)))


def test_oversized_volume_is_refused_before_decoding():
    limits = Limits(max_volume_voxels=20 ** 3)
    msg = _err(_crop_req(shape=(21, 21, 21), data=b""), limits)
    assert "9,261 voxels" in msg and "limit of 8,000" in msg


def test_request_id_length():
    req = crop_request(make_crop(), request_id="x" * 300)
    assert "request_id has 300 characters" in _err(req)


def test_volume_needs_world_inside_and_valid_geometry():
    vol = make_crop(2, size=24)
    base = volume_request(vol, (1.0, 1.0, 1.0), (12.0, 12.0, 12.0))
    r = pb.PredictRequest()
    r.CopyFrom(base)
    r.ClearField("world")
    assert "world is missing" in _err(r)
    outside = volume_request(vol, (1.0, 1.0, 1.0), (100.0, 12.0, 12.0))
    msg = _err(outside)
    assert "outside" in msg and "100.00" in msg and "extent x -0.5..23.5" in msg
    assert "spacing must be positive" in _err(volume_request(vol, (1.0, -2.0, 1.0), (12, 12, 12)))
    assert "volume.spacing must have 3" in _err(volume_request(vol, (1.0, 1.0), (12, 12, 12)))
    assert "orthonormal" in _err(volume_request(vol, (1, 1, 1), (12, 12, 12), direction=[1, 0, 0, 0, 2, 0, 0, 0, 1]))
    assert "not finite" in _err(volume_request(vol, (1, 1, 1), (float("inf"), 12, 12)))


def test_volume_crop_equals_training_crop_function():
    from naslung.data.crop import crop_at_world
    from naslung.data.volume import image_from_array

    rng = np.random.default_rng(3)
    vol = rng.normal(-500, 300, (20, 30, 40)).astype(np.int16)
    spacing, origin, world = (0.7, 0.8, 2.5), (-10.0, 5.0, -100.0), (3.0, -5.0, -80.0)
    direction = (1, 0, 0, 0, -1, 0, 0, 0, 1)  # a flipped y axis
    got = crop_from_request(volume_request(vol, spacing, world, origin, direction), SPEC)
    want = crop_at_world(image_from_array(vol, spacing, origin, direction), world, SPEC)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_off_spec_crop_is_resampled_about_its_centre():
    """A 32^3 crop at 0.5 mm holds the same 16 mm cube as a 16^3 crop at 1 mm around the same centre."""
    from naslung.data.crop import crop_at_world
    from naslung.data.volume import image_from_array

    fine = make_crop(4, size=32).astype(np.float32)
    got = crop_from_request(crop_request(fine, spacing_xyz=(0.5, 0.5, 0.5)), SPEC)
    img = image_from_array(fine, (0.5, 0.5, 0.5))
    want = crop_at_world(img, (8.0, 8.0, 8.0), SPEC)
    assert got.shape == (16, 16, 16)
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_crop_of_another_shape_without_spacing_is_refused_not_resampled():
    msg = _err(_crop_req(shape=(32, 32, 30)))
    assert "32x32x30" in msg and "16x16x16" in msg and "crop.spacing" in msg
    assert "8x8x8" in _err(_crop_req(shape=(8, 8, 8)))
    # with its spacing declared, the server resamples it (an explicit request)
    out = crop_from_request(_crop_req(shape=(32, 32, 32), spacing=(0.5, 0.5, 0.5)), SPEC)
    assert out.shape == (16, 16, 16)
