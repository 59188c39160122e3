"""The ASGI layer every request passes: request id, body limit, total time, access log.

Written as plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which costs a
task and a memory stream per request: this wrapper adds a few microseconds.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from torchferry.errors import PayloadTooLargeError

access_log = logging.getLogger("torchferry.access")

__all__ = ["RequestMiddleware", "json_error_body"]

Scope = dict[str, Any]
Message = dict[str, Any]
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def json_error_body(message: str, **extra: Any) -> bytes:
    """``{"error": message, ...}``: the error body of every protocol (tritonclient reads ``error``)."""
    return orjson.dumps({"error": message, **extra})


class RequestMiddleware:
    """Gives each HTTP request an id (``X-Request-ID``, echoed), refuses bodies over the
    limit with 413 before reading them, adds ``total`` to ``Server-Timing``, reports the
    finished request to ``on_complete`` (metrics) and writes one structured access-log line."""

    def __init__(
        self,
        app: Any,
        *,
        max_body_bytes: int,
        access_log_enabled: bool = True,
        on_complete: Callable[[dict[str, Any], int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log_enabled = access_log_enabled
        self.on_complete = on_complete

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = [0]
        if _declared_length(scope) > self.max_body_bytes:
            await self._too_large(send, request_id, status)
        else:
            await self._forward(scope, receive, send, start, request_id, status)
        if self.on_complete is not None:
            self.on_complete(state, status[0], time.perf_counter() - start)
        if self.access_log_enabled and access_log.isEnabledFor(logging.INFO):
            _log_access(scope, status[0], start, request_id)

    async def _forward(
        self, scope: Scope, receive: Any, send: Any, start: float, request_id: str, status: list[int]
    ) -> None:
        received = 0
        limit = self.max_body_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(self._too_large_message())
            return message

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                _add_total(headers, start)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, timed_send)
        except PayloadTooLargeError:  # raised by our receive where nothing answered it
            if status[0]:
                raise
            await self._too_large(send, request_id, status)

    def _too_large_message(self) -> str:
        return (
            f"the request body is larger than the server's limit of {_size(self.max_body_bytes)}; send fewer rows "
            "per request or start the server with a larger --max-body-mb."
        )

    async def _too_large(self, send: Any, request_id: str, status: list[int]) -> None:
        body = json_error_body(
            self._too_large_message(),
            type="PayloadTooLargeError",
        )
        status[0] = 413
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _size(count: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.4g} {unit}"
    return f"{count} bytes"


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"x-request-id" and _SAFE_ID.match(value):
            return str(value.decode())
    return f"{random.getrandbits(64):016x}"  # an id, not a secret: no system call per request


def _declared_length(scope: Scope) -> int:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _add_total(headers: list[tuple[bytes, bytes]], start: float) -> None:
    total = f"total;dur={1000 * (time.perf_counter() - start):.3f}".encode()
    for i, (key, value) in enumerate(headers):
        if key.lower() == b"server-timing":
            headers[i] = (key, value + b", " + total)
            return
    headers.append((b"server-timing", total))


def _log_access(scope: Scope, status: int, start: float, request_id: str) -> None:
    state = scope.get("state", {})
    record = {
        "request_id": request_id,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "ms": round(1000 * (time.perf_counter() - start), 3),
        "client": (scope.get("client") or ("", 0))[0],
    }
    if "model" in state:
        record["model"] = state["model"]
        record["batch"] = state.get("batch")
    access_log.info(orjson.dumps(record).decode())
