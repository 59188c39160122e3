"""A small HTTP/1.1 client on asyncio streams, for ``torchferry predict`` and ``torchferry bench``.

Persistent (keep-alive) connections, requests with a ``Content-Length`` body, responses
framed by ``Content-Length``, chunked transfer coding or the connection closing. The
request bytes can be built once (:func:`encode_request`) and written again and again,
which is what a load generator wants. No proxies, redirects or cookies: the other end
is a ``torchferry serve`` (or another inference server) named by its URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import torchferry.errors as errors_module
from torchferry._version import __version__
from torchferry.errors import FerryError, ModelFailedError, OverloadedError, UsageError

__all__ = [
    "Connection",
    "Endpoint",
    "Response",
    "Timing",
    "TransportError",
    "encode_request",
    "fetch",
    "is_url",
    "run",
    "server_error",
]

T = TypeVar("T")

MAX_HEADER_BYTES = 64 * 1024
"""The longest status line plus headers accepted (asyncio's stream limit)."""

USER_AGENT = f"torchferry/{__version__}"


class TransportError(UsageError):
    """The server could not be reached, or broke off or garbled its answer; ``.kind`` says which
    (``connect``, ``timeout``, ``closed``, ``protocol``)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def is_url(text: str) -> bool:
    return text.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Endpoint:
    """Where the server is: ``http://host:port`` with an optional path prefix (a reverse proxy's)."""

    scheme: str
    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url!r} is not an http:// or https:// URL; give one like http://127.0.0.1:8080.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UsageError(f"{url!r} has an invalid port; give one like http://127.0.0.1:8080.") from None
        if parts.query or parts.fragment:
            raise UsageError(f"{url!r}: give the server's base URL without ?query or #fragment.")
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, path: str = "") -> str:
        return f"{self.scheme}://{self.host_header}{self.prefix}{path}"


_TIMING_ITEM = re.compile(r'^\s*([A-Za-z0-9_.-]+)\s*((?:;\s*[A-Za-z0-9_-]+\s*=\s*(?:"[^"]*"|[^;,]*))*)\s*$')
_TIMING_PARAM = re.compile(r';\s*([A-Za-z0-9_-]+)\s*=\s*("[^"]*"|[^;,]*)')


@dataclass(frozen=True)
class Timing:
    """The server's ``Server-Timing`` header: queue wait, inference and end-to-end time (ms),
    and the batch the request ran in; None where the header does not say."""

    queue_ms: float | None = None
    infer_ms: float | None = None
    total_ms: float | None = None
    batch_size: int | None = None

    @classmethod
    def parse(cls, header: str | None) -> Timing:
        """``queue;dur=0.12, infer;dur=0.8, batch;desc="4", total;dur=1.3`` → Timing(0.12, 0.8, 1.3, 4)."""
        found: dict[str, dict[str, str]] = {}
        for item in (header or "").split(","):
            match = _TIMING_ITEM.match(item)
            if match:
                params = {k.lower(): v.strip().strip('"') for k, v in _TIMING_PARAM.findall(match.group(2))}
                found[match.group(1).lower()] = params
        return cls(
            queue_ms=_number(found.get("queue", {}).get("dur")),
            infer_ms=_number(found.get("infer", {}).get("dur")),
            total_ms=_number(found.get("total", {}).get("dur")),
            batch_size=_integer(found.get("batch", {}).get("desc")),
        )


def _number(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def _integer(text: str | None) -> int | None:
    value = _number(text)
    return None if value is None else int(value)


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    """Lower-case names; a repeated header's values joined with ', '."""
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def timing(self) -> Timing:
        return Timing.parse(self.headers.get("server-timing"))

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            preview = self.body[:200].decode("utf-8", "replace")
            raise UsageError(
                f"the server answered {self.status} {self.reason} with a body that is not JSON: {preview!r}; "
                "is the URL a torchferry (or Open Inference Protocol) server?"
            ) from None


def server_error(response: Response, what: str) -> FerryError:
    """The torchferry error a server's error response stands for, with the server's message.

    Our server names the error class in ``type``; that class comes back (InputError,
    NotFoundError, ...), else UsageError. ``what`` names the request (``POST http://...``).
    """
    message, kind, extra = f"{response.body[:500].decode('utf-8', 'replace')}", "", {}
    try:
        payload = json.loads(response.body)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        message, kind, extra = payload["error"], str(payload.get("type", "")), payload
    text = f"{what} answered {response.status} {response.reason}: {message}".rstrip(": ")
    if kind == "ModelFailedError":
        return ModelFailedError(text, error_id=str(extra.get("error_id", "")))
    if kind == "OverloadedError" or response.status == 429:
        retry = _number(response.headers.get("retry-after")) or 1.0
        return OverloadedError(f"{text} (retry after {retry:g} s)", retry_after_s=retry)
    cls = getattr(errors_module, kind, None) if kind.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, FerryError):
        try:
            return cls(text)
        except TypeError:  # a class that needs more than the message
            pass
    return UsageError(text)


def encode_request(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive, ``Content-Length`` body)."""
    lines = [
        f"{method} {endpoint.prefix}{path} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        f"User-Agent: {USER_AGENT}",
        "Accept: application/json",
    ]
    if body or method not in ("GET", "HEAD"):
        lines.append(f"Content-Length: {len(body)}")
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.extend(f"{key}: {value}" for key, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    """One persistent connection, opened on first use and re-opened when the server closed it.

    ``request`` sends pre-encoded request bytes and returns the whole response; every
    failure of the transport (refused, timed out, cut off, not HTTP) is a TransportError.
    """

    def __init__(self, endpoint: Endpoint, *, timeout: float = 30.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.opened = 0
        """How many times a TCP connection was opened (1 for a kept-alive connection)."""

    async def request(self, raw: bytes, *, method: str = "POST") -> Response:
        reused = self._writer is not None
        try:
            return await asyncio.wait_for(self._exchange(raw, method), self.timeout)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            await self.close()
            if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                # the server closed the idle kept-alive connection as we reused it: once more, on a new one
                return await self._retry(raw, method)
            raise self._failure(exc) from None
        except (OSError, asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError) as exc:
            await self.close()
            raise self._failure(exc) from None

    async def _retry(self, raw: bytes, method: str) -> Response:
        try:
            return await asyncio.wait_for(self._exchange(raw, method), self.timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            await self.close()
            raise self._failure(e) from None

    def _failure(self, exc: BaseException) -> TransportError:
        where = self.endpoint.url()
        if isinstance(exc, asyncio.TimeoutError):
            return TransportError(
                f"{where} did not answer within {self.timeout:g} s; is the server overloaded? "
                "Raise --timeout, or lower --concurrency.",
                kind="timeout",
            )
        if isinstance(exc, (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)):
            return TransportError(f"{where} closed the connection before answering completely.", kind="closed")
        if isinstance(exc, (asyncio.LimitOverrunError, ValueError)):
            return TransportError(f"{where} sent something that is not an HTTP/1.1 response ({exc}).", kind="protocol")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        return TransportError(
            f"cannot connect to {where} ({reason}); is `torchferry serve` running there? Check the host and port.",
            kind="connect",
        )

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            context = ssl.create_default_context() if self.endpoint.scheme == "https" else None
            self._reader, self._writer = await asyncio.open_connection(
                self.endpoint.host, self.endpoint.port, ssl=context, limit=MAX_HEADER_BYTES
            )
            self.opened += 1
        return self._reader, self._writer

    async def _exchange(self, raw: bytes, method: str) -> Response:
        reader, writer = await self._open()
        writer.write(raw)
        await writer.drain()
        response, keep_alive = await read_response(reader, method)
        if not keep_alive:
            await self.close()
        return response

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, method: str) -> tuple[Response, bool]:
    """One response from ``reader``, and whether the connection stays open after it."""
    while True:
        version, status, reason, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if not 100 <= status < 200:  # skip interim responses (100 Continue)
            break
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if version == "HTTP/1.0" and "keep-alive" in headers.get("connection", "").lower():
        keep_alive = True
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        length = int(headers["content-length"].split(",")[0])
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        body = await reader.readexactly(length)
    else:  # the body runs to the end of the connection
        body, keep_alive = await reader.read(), False
    return Response(status, reason, headers, body), keep_alive


def _parse_head(head: bytes) -> tuple[str, int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line {line[:80]!r}")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return version, int(code), reason.strip(), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the empty line
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("a chunk does not end with CRLF")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a fresh event loop: uvloop's where it is installed (a faster client)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)  # pragma: no cover - Python 3.10


def fetch(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str | None = None,
    timeout: float = 30.0,
) -> tuple[Response, float]:
    """One request on a new connection: the response and the round trip in ms."""

    async def exchange() -> tuple[Response, float]:
        connection = Connection(endpoint, timeout=timeout)
        try:
            start = time.perf_counter()
            response = await connection.request(
                encode_request(endpoint, method, path, body, content_type=content_type), method=method
            )
            return response, 1000 * (time.perf_counter() - start)
        finally:
            await connection.close()

    return run(exchange())
