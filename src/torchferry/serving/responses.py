"""What every protocol answers with: JSON bodies, timing headers, and errors mapped to codes."""

from __future__ import annotations

import logging
import math
import os
import time
import zlib
from typing import Any

import numpy as np
import orjson
import torch
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from torchferry.errors import FerryError, InputError, ModelFailedError, OverloadedError, PayloadTooLargeError
from torchferry.serving.batcher import BatchResult
from torchferry.serving.hosted import HostedModel
from torchferry.serving.middleware import json_error_body

log = logging.getLogger("torchferry.serving")

__all__ = [
    "deadline_for",
    "decode_body",
    "error_parts",
    "error_response",
    "ferry_error_handler",
    "http_error_handler",
    "json_response",
    "mark",
    "mark_state",
    "read_body",
    "timing_headers",
    "timing_parameters",
    "to_jsonable",
    "unexpected_error_handler",
    "unexpected_error_parts",
]

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_WBITS = {"gzip": 31, "deflate": 15, "x-gzip": 31}


async def read_body(request: Request) -> bytes:
    """The request body, decompressed when it says ``Content-Encoding: gzip`` or ``deflate``
    (tritonclient's ``request_compression_algorithm``), never past the body limit."""
    limit: int = request.app.state.config.max_body_bytes
    return decode_body(await request.body(), request.headers.get("content-encoding"), limit)


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise InputError(f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or an uncompressed body.")
    inflater = zlib.decompressobj(wbits=_WBITS[encoding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InputError(f"the body is not valid {encoding} data ({exc}).") from None
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"the request body decompresses to more than the server's limit of {limit} bytes; send fewer rows "
            "per request or start the server with a larger --max-body-mb."
        )
    if not inflater.eof:
        raise InputError(f"the {encoding} body is truncated.")
    return data


def json_response(content: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=_JSON_OPTIONS), status, headers, media_type="application/json")


def to_jsonable(value: Any) -> Any:
    """Numpy arrays and tensors from a model as something ``orjson`` writes fast (no Python loops)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
        value = value.numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "c":
            return np.stack([value.real, value.imag], axis=-1).tolist()  # [re, im] pairs
        return np.ascontiguousarray(value) if value.ndim else value.item()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value


def timing_headers(result: BatchResult) -> dict[str, str]:
    """The standard ``Server-Timing`` header: queue wait, inference, and the batch the request ran in."""
    return {
        "server-timing": f"queue;dur={result.queue_ms:.3f}, infer;dur={result.infer_ms:.3f}, "
        f'batch;desc="{result.batch_size}"'
    }


def timing_parameters(result: BatchResult) -> dict[str, str | int | float | bool]:
    """The same timings as OIP response ``parameters``."""
    return {
        "queue_ms": round(result.queue_ms, 3),
        "infer_ms": round(result.infer_ms, 3),
        "batch_size": result.batch_size,
    }


def mark(request: Request, hosted: HostedModel, protocol: str) -> None:
    """Note on the request which model and protocol served it (access log, metrics)."""
    mark_state(request.scope.setdefault("state", {}), hosted, protocol)


def mark_state(state: dict[str, Any], hosted: HostedModel, protocol: str) -> None:
    state["model"] = f"{hosted.name}:{hosted.version}"
    state["labels"] = (hosted.name, hosted.version, protocol)


def deadline_for(hosted: HostedModel, *, timeout_us: Any = None) -> float | None:
    """The request's deadline: the model's ``timeout_ms``, or sooner if the request asks (OIP ``timeout``, µs)."""
    limits = []
    if hosted.options.timeout_ms is not None:
        limits.append(hosted.options.timeout_ms / 1000)
    if isinstance(timeout_us, (int, float)) and not isinstance(timeout_us, bool) and timeout_us > 0:
        limits.append(timeout_us / 1e6)
    return time.monotonic() + min(limits) if limits else None


def error_response(status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    return Response(json_error_body(message, **extra), status, headers, media_type="application/json")


def error_parts(exc: FerryError) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and headers of the answer to ``exc``, the same on every route."""
    extra: dict[str, Any] = {"type": type(exc).__name__}
    headers = {}
    if isinstance(exc, ModelFailedError):
        extra["error_id"] = exc.error_id
    if isinstance(exc, OverloadedError):
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after_s)))
    return exc.http_status, json_error_body(exc.message, **extra), headers


def unexpected_error_parts(method: str, path: str, exc: BaseException) -> tuple[int, bytes, dict[str, str]]:
    """A bug of ours: 500 with an error id that is also in the log with the traceback."""
    error_id = os.urandom(6).hex()
    log.error("unexpected error on %s %s (error id %s)", method, path, error_id, exc_info=exc)
    message = f"internal error (error id {error_id}; the server log has the traceback). Please report it."
    return 500, json_error_body(message, type="InternalError", error_id=error_id), {}


async def ferry_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, FerryError)  # noqa: S101 - registered for FerryError only
    status, body, headers = error_parts(exc)
    return Response(body, status, headers, media_type="application/json")


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101
    message = exc.detail
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    if exc.status_code == 404:
        message = (
            f"no endpoint {request.method} {request.url.path}; see /docs for the endpoints "
            "(/v2/models/{m}/infer, /v1/models/{m}:predict, /predict/{m})."
        )
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see /docs."
    return error_response(exc.status_code, str(message), headers=dict(exc.headers or {}), type=kind)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    status, body, headers = unexpected_error_parts(request.method, request.url.path, exc)
    return Response(body, status, headers, media_type="application/json")
