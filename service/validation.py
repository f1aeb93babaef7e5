"""Request validation: every field of a request checked, every problem a precise INVALID_ARGUMENT.

``crop_from_request`` turns a ``PredictRequest`` into the (S, S, S) float32 HU crop the model sees,
or raises :class:`RequestError` with the gRPC status and a message naming the field and the fault
(wrong voxel count for the shape, non-positive spacing, NaN/Inf, coordinate outside the volume,
unsupported dtype, no input, too many voxels). Resampling goes through ``naslung.data.crop`` --
the same function that prepared the training crops.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
import numpy as np

from naslung.data.spec import CropSpec
from service.generated import nodule_service_pb2 as pb

log = logging.getLogger(__name__)

_DTYPES = {pb.DTYPE_INT16: np.dtype("<i2"), pb.DTYPE_FLOAT32: np.dtype("<f4")}
MAX_REQUEST_ID = 256
# Sane physical ranges. Finite is not enough: a spacing of 1e-300 mm is finite and positive, and
# used to reach SimpleITK, whose error (with its build path) came back to the client as INTERNAL.
MIN_SPACING_MM = 1e-3      # 1 micrometre; CT voxels are 0.1..10 mm
MAX_SPACING_MM = 1e3       # 1 metre
MAX_COORD_MM = 1e6         # 1 km from the scanner's origin: origin and world coordinates


class RequestError(Exception):
    """A request the server refuses; ``code`` is the gRPC status to answer with."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_volume_voxels: int = 64 * 1024 * 1024  # 512 x 512 x 256
    max_message_bytes: int = 160 * 1024 * 1024  # transport limit; leaves room above the voxel limit


def _shape_str(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def array_from_proto(a: pb.Array3D, field: str, max_voxels: int) -> np.ndarray:
    """Decode an Array3D into a (z, y, x) numpy array (a read-only view on the message bytes)."""
    shape = tuple(int(s) for s in a.shape)
    if len(shape) != 3:
        raise RequestError(f"{field}.shape must have 3 values (z, y, x), got {len(shape)}: {list(shape)}")
    if min(shape) <= 0:
        raise RequestError(f"{field}.shape {_shape_str(shape)} has a zero dimension")
    n = math.prod(shape)
    if n > max_voxels:
        raise RequestError(f"{field}.shape {_shape_str(shape)} has {n:,} voxels, over the server's limit of "
                           f"{max_voxels:,}; send a smaller region around the nodule")
    if a.dtype not in _DTYPES:
        if a.dtype == pb.DTYPE_UNSPECIFIED:
            raise RequestError(f"{field}.dtype is not set; use DTYPE_INT16 or DTYPE_FLOAT32")
        raise RequestError(f"{field}.dtype {a.dtype} is not supported; use DTYPE_INT16 or DTYPE_FLOAT32")
    dt = _DTYPES[a.dtype]
    want = n * dt.itemsize
    if len(a.data) != want:
        raise RequestError(f"{field}.data has {len(a.data):,} bytes but shape {_shape_str(shape)} of "
                           f"{dt.name} needs {want:,} ({n:,} voxels x {dt.itemsize} bytes)")
    arr = np.frombuffer(a.data, dtype=dt).reshape(shape)
    if dt.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            first = np.unravel_index(int(np.argmin(finite.ravel())), shape)
            raise RequestError(f"{field} has {bad:,} NaN/Inf value(s) of {arr.size:,} "
                               f"(first at z,y,x = {tuple(int(i) for i in first)})")
    return arr


def _vector(values, n_allowed: tuple[int, ...], field: str, *, positive: bool = False,
            max_abs: float | None = None) -> tuple[float, ...] | None:
    """A repeated double of an allowed length (0 = not given -> None), finite; a spacing
    (``positive``) within MIN_SPACING_MM..MAX_SPACING_MM, a coordinate within +-``max_abs``."""
    v = tuple(float(x) for x in values)
    if len(v) == 0 and 0 in n_allowed:
        return None
    if len(v) not in n_allowed:
        want = " or ".join(str(k) for k in n_allowed if k)
        raise RequestError(f"{field} must have {want} values{' (or none)' if 0 in n_allowed else ''}, got {len(v)}")
    for i, x in enumerate(v):
        if not math.isfinite(x):
            raise RequestError(f"{field}[{i}] = {x} is not a finite number")
        if positive and x <= 0:
            raise RequestError(f"{field}[{i}] = {x:g} mm; spacing must be positive")
        if positive and not MIN_SPACING_MM <= x <= MAX_SPACING_MM:
            raise RequestError(f"{field}[{i}] = {x:g} mm; spacing must lie within {MIN_SPACING_MM:g}.."
                               f"{MAX_SPACING_MM:g} mm")
        if max_abs is not None and abs(x) > max_abs:
            raise RequestError(f"{field}[{i}] = {x:g} mm; coordinates must lie within +-{max_abs:g} mm")
    return v


def _direction(values, field: str) -> tuple[float, ...] | None:
    d = _vector(values, (0, 9), field)
    if d is None:
        return None
    m = np.asarray(d).reshape(3, 3)
    if not np.allclose(m.T @ m, np.eye(3), atol=1e-3):
        raise RequestError(f"{field} is not an orthonormal 3x3 matrix (row-major): {list(d)}")
    return d


def _resample(arr: np.ndarray, spacing, origin, direction, world_xyz, spec: CropSpec, field: str) -> np.ndarray:
    try:
        from naslung.data.crop import crop_at_world
        from naslung.data.volume import VolumeError, image_from_array
    except ImportError as e:  # e.g. a load-test box without SimpleITK
        # the import error (library paths) is for the operator's log, not the client
        log.warning("cannot resample %s: %s: %s", field, type(e).__name__, e)
        raise RequestError(f"this server cannot resample {field} (its resampling library is not installed; "
                           f"the server log says more); send a crop of "
                           f"{_shape_str(spec.shape)} voxels at {spec.spacing_mm:g} mm",
                           grpc.StatusCode.FAILED_PRECONDITION) from None
    try:  # VolumeError covers bad geometry and a coordinate outside the volume (with its extent)
        image = image_from_array(arr, spacing, origin or (0.0, 0.0, 0.0), direction, source=field)
        return crop_at_world(image, world_xyz, spec, source=field).astype(np.float32)
    except VolumeError as e:
        raise RequestError(str(e)) from None


def crop_from_request(req: pb.PredictRequest, spec: CropSpec, limits: Limits = Limits(),
                      field: str = "") -> np.ndarray:
    """The model-input crop (S, S, S) float32 HU for a request, or :class:`RequestError`."""
    p = field + "." if field else ""
    if len(req.request_id) > MAX_REQUEST_ID:
        raise RequestError(f"{p}request_id has {len(req.request_id)} characters; at most {MAX_REQUEST_ID}")
    kind = req.WhichOneof("input")
    if kind is None:
        raise RequestError(f"{p}request has no input: set `crop` (a nodule-centred crop) or `volume` + `world`")
    if kind == "crop":
        c = req.crop
        if not c.HasField("voxels"):
            raise RequestError(f"{p}crop.voxels is missing")
        arr = array_from_proto(c.voxels, f"{p}crop.voxels", limits.max_volume_voxels)
        spacing = _vector(c.spacing, (0, 3), f"{p}crop.spacing", positive=True)
        same_grid = spacing is None or all(abs(s - spec.spacing_mm) <= 1e-4 * spec.spacing_mm for s in spacing)
        if arr.shape == spec.shape and same_grid:
            return arr.astype(np.float32)
        if spacing is None:
            # Never guess: a crop of another shape without its spacing is most likely a mistake (a crop
            # cut for another model), and resampling it silently would answer for the wrong tissue.
            raise RequestError(f"{p}crop.voxels is {_shape_str(arr.shape)} but this model takes "
                               f"{_shape_str(spec.shape)} voxels at {spec.spacing_mm:g} mm; send crop.spacing "
                               "(x, y, z mm) to have the server resample it, or a crop on the model's grid")
        # The nodule is at the crop's centre voxel (size // 2 on each axis), as in training crops.
        centre = tuple(spacing[i] * (arr.shape[2 - i] // 2) for i in range(3))
        return _resample(arr, spacing, None, None, centre, spec, f"{p}crop")
    v = req.volume
    if not v.HasField("voxels"):
        raise RequestError(f"{p}volume.voxels is missing")
    arr = array_from_proto(v.voxels, f"{p}volume.voxels", limits.max_volume_voxels)
    spacing = _vector(v.spacing, (3,), f"{p}volume.spacing", positive=True)
    origin = _vector(v.origin, (0, 3), f"{p}volume.origin", max_abs=MAX_COORD_MM)
    direction = _direction(v.direction, f"{p}volume.direction")
    if not req.HasField("world"):
        raise RequestError(f"{p}world is missing: a volume needs the nodule centre (x, y, z) in mm")
    w = (req.world.x, req.world.y, req.world.z)
    if not all(math.isfinite(x) for x in w):
        raise RequestError(f"{p}world ({w[0]}, {w[1]}, {w[2]}) is not finite")
    if any(abs(x) > MAX_COORD_MM for x in w):
        raise RequestError(f"{p}world ({w[0]:g}, {w[1]:g}, {w[2]:g}) mm; coordinates must lie within "
                           f"+-{MAX_COORD_MM:g} mm")
    return _resample(arr, spacing, origin, direction, w, spec, f"{p}volume")
