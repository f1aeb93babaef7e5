"""Python client for naslung.v1.NoduleService.

    with NoduleClient("127.0.0.1:50051") as c:
        r = c.predict_crop(crop_hu)                       # (S, S, S) HU, model spacing
        r = c.predict_volume(voxels_zyx, spacing_xyz, origin_xyz, direction, world_xyz)
        for r in c.predict_stream(requests): ...
        e = c.explain(c.crop_request(crop_hu), methods=["cbam"])
        info = c.model_info()

TLS: pass ``root_cert`` (PEM bytes or path) for a server certificate; ``token`` adds
``authorization: Bearer <token>`` to every call. Errors arrive as ``grpc.RpcError``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc
import numpy as np

from service.generated import nodule_service_pb2 as pb
from service.generated import nodule_service_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE = 160 * 1024 * 1024


def array_to_proto(values: np.ndarray) -> pb.Array3D:
    """int16 stays int16; every other dtype is sent as float32."""
    a = np.asarray(values)
    if a.ndim != 3:
        raise ValueError(f"expected a 3-D (z, y, x) array, got shape {a.shape}")
    if a.dtype == np.int16:
        return pb.Array3D(shape=list(a.shape), dtype=pb.DTYPE_INT16, data=np.ascontiguousarray(a, "<i2").tobytes())
    return pb.Array3D(shape=list(a.shape), dtype=pb.DTYPE_FLOAT32, data=np.ascontiguousarray(a, "<f4").tobytes())


def array_from_proto(a: pb.Array3D) -> np.ndarray:
    dt = {pb.DTYPE_INT16: "<i2", pb.DTYPE_FLOAT32: "<f4"}[a.dtype]
    return np.frombuffer(a.data, dtype=dt).reshape(tuple(a.shape))


def crop_request(crop_hu: np.ndarray, spacing_xyz: Sequence[float] | None = None, request_id: str = "") -> pb.PredictRequest:
    return pb.PredictRequest(request_id=request_id,
                             crop=pb.Crop(voxels=array_to_proto(crop_hu), spacing=list(spacing_xyz or [])))


def volume_request(voxels_zyx: np.ndarray, spacing_xyz: Sequence[float], world_xyz: Sequence[float],
                   origin_xyz: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] | None = None,
                   request_id: str = "") -> pb.PredictRequest:
    x, y, z = (float(v) for v in world_xyz)
    return pb.PredictRequest(
        request_id=request_id, world=pb.Point3D(x=x, y=y, z=z),
        volume=pb.Volume(voxels=array_to_proto(voxels_zyx), spacing=[float(s) for s in spacing_xyz],
                         origin=[float(o) for o in origin_xyz],
                         direction=[float(d) for d in np.asarray(direction).ravel()] if direction is not None else []))


def image_request(image, world_xyz: Sequence[float], request_id: str = "") -> pb.PredictRequest:
    """A request from a SimpleITK image (as read by ``naslung.data.volume.read_volume``)."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)
    if arr.dtype != np.int16:
        arr = arr.astype(np.int16) if np.issubdtype(arr.dtype, np.integer) and arr.min() >= -32768 and arr.max() <= 32767 \
            else arr.astype(np.float32)
    return volume_request(arr, image.GetSpacing(), world_xyz, image.GetOrigin(), image.GetDirection(), request_id)


class NoduleClient:
    def __init__(self, target: str, *, root_cert: bytes | str | Path | None = None, token: str | None = None,
                 timeout: float | None = 30.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
                 server_name: str | None = None) -> None:
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.NoduleServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    # -- requests -------------------------------------------------------------------------------
    crop_request = staticmethod(crop_request)
    volume_request = staticmethod(volume_request)
    image_request = staticmethod(image_request)

    def _kw(self, timeout: float | None):
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    def predict(self, request: pb.PredictRequest, timeout: float | None = None) -> pb.PredictResponse:
        return self.stub.Predict(request, **self._kw(timeout))

    def predict_crop(self, crop_hu: np.ndarray, spacing_xyz: Sequence[float] | None = None, **kw) -> pb.PredictResponse:
        return self.predict(crop_request(crop_hu, spacing_xyz), **kw)

    def predict_volume(self, voxels_zyx: np.ndarray, spacing_xyz: Sequence[float], world_xyz: Sequence[float],
                       origin_xyz: Sequence[float] = (0.0, 0.0, 0.0), direction: Sequence[float] | None = None,
                       **kw) -> pb.PredictResponse:
        return self.predict(volume_request(voxels_zyx, spacing_xyz, world_xyz, origin_xyz, direction), **kw)

    def predict_stream(self, requests: Iterable[pb.PredictRequest], timeout: float | None = None) -> Iterator[pb.PredictResponse]:
        """One response per request, in order; failed items carry ``error`` instead of a probability."""
        return self.stub.PredictStream(iter(requests), **self._kw(timeout))

    def explain(self, request: pb.PredictRequest, methods: Sequence[str] = (), include_png: bool = False,
                include_crop: bool = False, timeout: float | None = None) -> pb.ExplainResponse:
        return self.stub.Explain(pb.ExplainRequest(input=request, methods=list(methods), include_png=include_png,
                                                   include_crop=include_crop), **self._kw(timeout))

    def model_info(self, timeout: float | None = None) -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(), **self._kw(timeout))

    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """Status name from grpc.health.v1 (SERVING, NOT_SERVING, ...)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "NoduleClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
