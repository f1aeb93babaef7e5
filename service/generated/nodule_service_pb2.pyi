from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_INT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_INT16: DType
DTYPE_FLOAT32: DType

class Array3D(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Crop(_message.Message):
    __slots__ = ("voxels", "spacing")
    VOXELS_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    voxels: Array3D
    spacing: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, voxels: _Optional[_Union[Array3D, _Mapping]] = ..., spacing: _Optional[_Iterable[float]] = ...) -> None: ...

class Volume(_message.Message):
    __slots__ = ("voxels", "spacing", "origin", "direction")
    VOXELS_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    voxels: Array3D
    spacing: _containers.RepeatedScalarFieldContainer[float]
    origin: _containers.RepeatedScalarFieldContainer[float]
    direction: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, voxels: _Optional[_Union[Array3D, _Mapping]] = ..., spacing: _Optional[_Iterable[float]] = ..., origin: _Optional[_Iterable[float]] = ..., direction: _Optional[_Iterable[float]] = ...) -> None: ...

class Point3D(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("request_id", "crop", "volume", "world")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    WORLD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    crop: Crop
    volume: Volume
    world: Point3D
    def __init__(self, request_id: _Optional[str] = ..., crop: _Optional[_Union[Crop, _Mapping]] = ..., volume: _Optional[_Union[Volume, _Mapping]] = ..., world: _Optional[_Union[Point3D, _Mapping]] = ...) -> None: ...

class MemberProbability(_message.Message):
    __slots__ = ("name", "malignancy_probability")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MALIGNANCY_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    malignancy_probability: float
    def __init__(self, name: _Optional[str] = ..., malignancy_probability: _Optional[float] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("queue_ms", "inference_ms", "total_ms", "batch_size")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    inference_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "malignancy_probability", "label", "label_name", "members", "model_version", "timing", "error", "threshold")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MALIGNANCY_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    malignancy_probability: float
    label: int
    label_name: str
    members: _containers.RepeatedCompositeFieldContainer[MemberProbability]
    model_version: str
    timing: Timing
    error: ItemError
    threshold: float
    def __init__(self, request_id: _Optional[str] = ..., malignancy_probability: _Optional[float] = ..., label: _Optional[int] = ..., label_name: _Optional[str] = ..., members: _Optional[_Iterable[_Union[MemberProbability, _Mapping]]] = ..., model_version: _Optional[str] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., threshold: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("input", "methods", "include_png", "include_crop")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PNG_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CROP_FIELD_NUMBER: _ClassVar[int]
    input: PredictRequest
    methods: _containers.RepeatedScalarFieldContainer[str]
    include_png: bool
    include_crop: bool
    def __init__(self, input: _Optional[_Union[PredictRequest, _Mapping]] = ..., methods: _Optional[_Iterable[str]] = ..., include_png: _Optional[bool] = ..., include_crop: _Optional[bool] = ...) -> None: ...

class AttributionMap(_message.Message):
    __slots__ = ("method", "layer", "values", "spacing", "png")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    method: str
    layer: str
    values: Array3D
    spacing: _containers.RepeatedScalarFieldContainer[float]
    png: bytes
    def __init__(self, method: _Optional[str] = ..., layer: _Optional[str] = ..., values: _Optional[_Union[Array3D, _Mapping]] = ..., spacing: _Optional[_Iterable[float]] = ..., png: _Optional[bytes] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("prediction", "maps", "crop")
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    MAPS_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    prediction: PredictResponse
    maps: _containers.RepeatedCompositeFieldContainer[AttributionMap]
    crop: Array3D
    def __init__(self, prediction: _Optional[_Union[PredictResponse, _Mapping]] = ..., maps: _Optional[_Iterable[_Union[AttributionMap, _Mapping]]] = ..., crop: _Optional[_Union[Array3D, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CropSpecInfo(_message.Message):
    __slots__ = ("size", "spacing_mm", "hu_min", "hu_max", "pad_hu")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    HU_MIN_FIELD_NUMBER: _ClassVar[int]
    HU_MAX_FIELD_NUMBER: _ClassVar[int]
    PAD_HU_FIELD_NUMBER: _ClassVar[int]
    size: int
    spacing_mm: float
    hu_min: float
    hu_max: float
    pad_hu: float
    def __init__(self, size: _Optional[int] = ..., spacing_mm: _Optional[float] = ..., hu_min: _Optional[float] = ..., hu_max: _Optional[float] = ..., pad_hu: _Optional[float] = ...) -> None: ...

class MemberInfo(_message.Message):
    __slots__ = ("name", "config_json", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_batch", "max_delay_ms", "max_queue", "max_message_bytes", "max_volume_voxels", "predict_slots", "explain_slots", "explain_concurrency", "stream_slots", "streams_per_client", "other_slots", "stream_idle_s", "stream_window", "max_call_s", "max_inflight_bytes", "request_memory_factor", "receive_slots", "stream_read_slots", "stream_read_hold_s", "explain_ig_steps", "explain_occlusion_passes", "explain_max_methods")
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_VOLUME_VOXELS_FIELD_NUMBER: _ClassVar[int]
    PREDICT_SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    STREAM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    OTHER_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_IDLE_S_FIELD_NUMBER: _ClassVar[int]
    STREAM_WINDOW_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_MEMORY_FACTOR_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_READ_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STREAM_READ_HOLD_S_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_IG_STEPS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_OCCLUSION_PASSES_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_MAX_METHODS_FIELD_NUMBER: _ClassVar[int]
    max_batch: int
    max_delay_ms: float
    max_queue: int
    max_message_bytes: int
    max_volume_voxels: int
    predict_slots: int
    explain_slots: int
    explain_concurrency: int
    stream_slots: int
    streams_per_client: int
    other_slots: int
    stream_idle_s: float
    stream_window: int
    max_call_s: float
    max_inflight_bytes: int
    request_memory_factor: float
    receive_slots: int
    stream_read_slots: int
    stream_read_hold_s: float
    explain_ig_steps: int
    explain_occlusion_passes: int
    explain_max_methods: int
    def __init__(self, max_batch: _Optional[int] = ..., max_delay_ms: _Optional[float] = ..., max_queue: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_volume_voxels: _Optional[int] = ..., predict_slots: _Optional[int] = ..., explain_slots: _Optional[int] = ..., explain_concurrency: _Optional[int] = ..., stream_slots: _Optional[int] = ..., streams_per_client: _Optional[int] = ..., other_slots: _Optional[int] = ..., stream_idle_s: _Optional[float] = ..., stream_window: _Optional[int] = ..., max_call_s: _Optional[float] = ..., max_inflight_bytes: _Optional[int] = ..., request_memory_factor: _Optional[float] = ..., receive_slots: _Optional[int] = ..., stream_read_slots: _Optional[int] = ..., stream_read_hold_s: _Optional[float] = ..., explain_ig_steps: _Optional[int] = ..., explain_occlusion_passes: _Optional[int] = ..., explain_max_methods: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_version", "manifest_json", "members", "input_spec", "combination_rule", "threshold", "explain_methods", "limits", "api_version")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SPEC_FIELD_NUMBER: _ClassVar[int]
    COMBINATION_RULE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_METHODS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    manifest_json: str
    members: _containers.RepeatedCompositeFieldContainer[MemberInfo]
    input_spec: CropSpecInfo
    combination_rule: str
    threshold: float
    explain_methods: _containers.RepeatedScalarFieldContainer[str]
    limits: ServerLimits
    api_version: str
    def __init__(self, model_version: _Optional[str] = ..., manifest_json: _Optional[str] = ..., members: _Optional[_Iterable[_Union[MemberInfo, _Mapping]]] = ..., input_spec: _Optional[_Union[CropSpecInfo, _Mapping]] = ..., combination_rule: _Optional[str] = ..., threshold: _Optional[float] = ..., explain_methods: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., api_version: _Optional[str] = ...) -> None: ...
