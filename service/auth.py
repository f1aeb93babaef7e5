"""Bearer-token check for every RPC (except health checks, so probes work without the secret).

Clients send ``authorization: Bearer <token>`` metadata; anything else is answered
UNAUTHENTICATED before the handler runs. The comparison is constant-time. Without TLS the token
travels in clear text -- fine on loopback, not across a network.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Callable

import grpc

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def read_token(path: str | Path) -> str:
    p = Path(path)
    try:
        token = p.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"token file {p} does not exist") from None
    if not token:
        raise ValueError(f"token file {p} is empty")
    if any(c.isspace() for c in token):
        raise ValueError(f"token file {p} holds whitespace inside the token; use a single line without spaces")
    return token


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    return grpc.unary_unary_rpc_method_handler(abort, **kw)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str, on_reject: Callable[[str], None] | None = None) -> None:
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        got = None
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else value
                break
        if got is not None and hmac.compare_digest(got, self._expected):
            return handler
        if self._on_reject is not None:
            self._on_reject(method)
        reason = "missing 'authorization: Bearer <token>' metadata" if got is None else "invalid bearer token"
        return _deny(handler, reason)
