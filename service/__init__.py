"""The gRPC service (naslung.v1.NoduleService) around a bundle.

    codegen     generate service/generated/ from proto/naslung/v1/*.proto (checked in)
    validation  request -> model-input crop, or INVALID_ARGUMENT with a precise message
    predictor   the Predictor protocol and its ensemble implementation
    batching    dynamic batching with a bounded queue and deadline-aware dropping
    auth        bearer-token interceptor
    metrics     Prometheus metrics in a per-server registry
    server      NoduleServer / serve(): RPCs, health, reflection, TLS, graceful drain
    client      NoduleClient and request builders
    png         dependency-free PNG of attribution-map slices

See docs/service.md.
"""
