"""The hot path: inference requests answered in plain ASGI, without the framework's routing.

For a small model the forward pass takes tens of microseconds and the request's trip
through routing, dependency solving and ``Request``/``Response`` objects costs several
times that; on one core it caps throughput. ``POST /predict/{m}`` (JSON and raw images)
and ``POST /v2/models/{m}[/versions/{v}]/infer`` are therefore matched here by string
operations and answered by the same protocol functions the FastAPI routes call, so the
two paths cannot drift apart. Everything else, multipart uploads included, goes on to
FastAPI, which also documents these routes in ``/docs``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from torchferry.errors import FerryError, InputError
from torchferry.serving.hosted import HostedModel
from torchferry.serving.manager import ModelManager
from torchferry.serving.oip import infer_call
from torchferry.serving.responses import decode_body, error_parts, mark_state, unexpected_error_parts
from torchferry.serving.simple import body_inputs, content_type_of, predict_call

__all__ = ["FastPath"]

Scope = dict[str, Any]
Handler = Callable[[HostedModel, bytes, dict[str, str], dict[str, Any]], Awaitable[tuple[bytes, dict[str, str], str]]]


def match(path: str) -> tuple[str, str, str | None] | None:
    """``(protocol, model, version)`` for the hot routes, else ``None``."""
    if path.startswith("/predict/"):
        parts = path[9:].split("/")
        if len(parts) == 1 and parts[0]:
            return "simple", parts[0], None
        if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
            return "simple", parts[0], parts[2]
        return None
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        parts = path[11:-6].split("/")
        if len(parts) == 1 and parts[0]:
            return "v2", parts[0], None
        if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
            return "v2", parts[0], parts[2]
    return None


async def _simple(
    hosted: HostedModel, body: bytes, headers: dict[str, str], state: dict[str, Any]
) -> tuple[bytes, dict[str, str], str]:
    inputs, is_upload = body_inputs(content_type_of(headers), body)
    content, response_headers = await predict_call(hosted, inputs, is_upload, state)
    return content, response_headers, "application/json"


_HANDLERS: dict[str, Handler] = {"simple": _simple, "v2": infer_call}


class FastPath:
    """ASGI middleware answering the hot routes itself; the rest goes to ``app``."""

    def __init__(self, app: Any, *, manager: ModelManager, max_body_bytes: int) -> None:
        self.app = app
        self.manager = manager
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        route = match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        if content_type_of(headers) == "multipart/form-data":
            await self.app(scope, receive, send)  # the framework's form parser
            return
        try:
            status, content, response_headers, media_type = 200, *await self._answer(route, headers, scope, receive)
        except FerryError as exc:
            status, content, response_headers = error_parts(exc)
            media_type = "application/json"
        except Exception as exc:  # a bug of ours: answer 500 with an error id, never drop the connection
            status, content, response_headers = unexpected_error_parts(scope["method"], scope["path"], exc)
            media_type = "application/json"
        await _send(send, status, content, response_headers, media_type)

    async def _answer(
        self, route: tuple[str, str, str | None], headers: dict[str, str], scope: Scope, receive: Any
    ) -> tuple[bytes, dict[str, str], str]:
        protocol, name, version = route
        hosted = self.manager.for_inference(name, version)
        state = scope.setdefault("state", {})
        mark_state(state, hosted, protocol)
        body = decode_body(await _read(receive), headers.get("content-encoding"), self.max_body_bytes)
        return await _HANDLERS[protocol](hosted, body, headers, state)


async def _read(receive: Any) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InputError("the client disconnected before sending the whole body.")
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def _send(send: Any, status: int, content: bytes, headers: dict[str, str], media_type: str) -> None:
    raw = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(content)).encode()),
        *((key.encode(), value.encode()) for key, value in headers.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})
