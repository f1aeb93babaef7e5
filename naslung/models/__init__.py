"""naslung.models: residual 3D CBAM networks, margin heads, named configs and profiling.

Public API::

    build_model(cfg) -> NASLungNet      model(x) logits, .predict_proba(x), .embed(x)
    get_config(name) / MODEL_REGISTRY   named ModelConfigs ("tiny", "small", "model1", ...)
    profile_model(cfg, device, input_size) -> {params, macs, flops, latency_ms, ...}
"""
from naslung.models.config import ModelConfig
from naslung.models.network import NASLungNet, build_model
from naslung.models.profile import count_macs, count_params, profile_model
from naslung.models.registry import MODEL_REGISTRY, get_config, resolve_config

__all__ = ["ModelConfig", "NASLungNet", "build_model", "get_config", "resolve_config", "MODEL_REGISTRY",
           "profile_model", "count_params", "count_macs"]
