"""Shared pieces of the serving end-to-end tests: archives, real ``torchferry serve`` processes, raw HTTP.

Nothing of the server is mocked: every server is ``python -m torchferry.cli.main serve ...`` in its
own process on 127.0.0.1 (``--port 0``; the port is read from uvicorn's "Uvicorn running on" line),
stopped by its PID with SIGTERM, then SIGKILL to its process group if it does not exit in time.
Requests go over real sockets with ``http.client`` (one connection per request unless a test
holds one open on purpose), or with ``tritonclient.http`` where the tests want an external client.

The archives are packed once per test session (``session_archives``) and shared by every module:
``torch.export`` takes seconds per model on a slow machine, the python-mode ones a fraction of one.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import torchferry

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 30.0
_PORT_LINE = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

IRIS_LABELS = ["setosa", "versicolor", "virginica"]
IMAGE_LABELS = ["cat", "dog", "owl"]
IMAGE_MEAN, IMAGE_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)

# ------------------------------------------------------------------------------------------ models

PROBE_MODULE = "torchferry_serving_probe"
PROBE_SOURCE = '''
"""A model whose behaviour the request chooses: the tests' slow and failing model (mode="python")."""

import time

import torch
from torch import nn

FAIL_BELOW = -100.0


class Probe(nn.Module):
    """Linear(4, 3). A row with x[0] < -100 makes forward raise (the whole batch); x[3] > 0 makes
    forward sleep that many seconds (the batch's largest), so queues fill and deadlines pass on cue."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if bool((x[:, 0] < FAIL_BELOW).any()):
            raise ValueError("probe: a row asked this model to fail")
        delay = float(x[:, 3].max())
        if delay > 0:
            time.sleep(min(delay, 10.0))
        return self.fc(x)
'''
FAIL_VALUE = -1000.0
"""Put in column 0 of a probe row to make the model raise."""


class Bag(nn.Module):
    """Two inputs (INT64 ids, FP64 scale), two named outputs (FP64, INT64): the non-float32 datatypes."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3).double()

    def forward(self, ids: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"vec": self.emb(ids).sum(1) * scale, "total": ids.sum(1, keepdim=True)}


class TinyConv(nn.Module):
    """A small image CNN: 3x8x8 → 3 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@dataclass(frozen=True)
class Archives:
    """Packed archives and the eager modules they came from (the reference outputs)."""

    root: Path
    iris: Path
    iris_model: nn.Module
    bag: Path
    bag_model: nn.Module
    image: Path
    image_model: nn.Module
    probe: Path
    probe_model: nn.Module
    probe_v2: Path
    probe_v2_model: nn.Module
    pack_seconds: float

    def probe_eager(self, rows: torch.Tensor, *, version: int = 1) -> torch.Tensor:
        """The probe's eager output for ``rows`` (its delay column is ignored: no sleeping)."""
        model = self.probe_model if version == 1 else self.probe_v2_model
        with torch.no_grad():
            out: torch.Tensor = model.fc(rows)
        return out


_ARCHIVES: dict[Path, Archives] = {}


def session_archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    """The test session's archives, packed on first use (each module's fixture calls this)."""
    root = tmp_path_factory.getbasetemp() / "serving-archives"
    if root not in _ARCHIVES:
        _ARCHIVES[root] = _pack_all(root)
    return _ARCHIVES[root]


def _pack_all(root: Path) -> Archives:
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    iris_model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    torchferry.pack(
        iris_model,
        root / "iris.ferry",
        example_inputs=(torch.randn(2, 4),),
        name="iris",
        labels=IRIS_LABELS,
        fsync=False,
    )
    bag_model = Bag().eval()
    examples = (torch.randint(0, 10, (2, 5)), torch.rand(2, 1, dtype=torch.float64))
    torchferry.pack(bag_model, root / "bag.ferry", example_inputs=examples, name="bag", fsync=False)
    image_model = TinyConv().eval()
    torchferry.pack(
        image_model,
        root / "img.ferry",
        example_inputs=torch.randn(2, 3, 8, 8),
        name="img",
        labels=IMAGE_LABELS,
        preprocess=torchferry.ImageInput(resize=10, center_crop=8, mean=IMAGE_MEAN, std=IMAGE_STD),
        postprocess=torchferry.Classify(top_k=3, softmax=True),
        fsync=False,
    )
    probe, probe_model = _pack_probe(root, version="1", seed=1)
    probe_v2, probe_v2_model = _pack_probe(root, version="2", seed=2)
    return Archives(
        root=root,
        iris=root / "iris.ferry",
        iris_model=iris_model,
        bag=root / "bag.ferry",
        bag_model=bag_model,
        image=root / "img.ferry",
        image_model=image_model,
        probe=probe,
        probe_model=probe_model,
        probe_v2=probe_v2,
        probe_v2_model=probe_v2_model,
        pack_seconds=time.perf_counter() - start,
    )


def _pack_probe(root: Path, *, version: str, seed: int) -> tuple[Path, nn.Module]:
    """Pack the probe in mode="python" (its data-dependent branch cannot be exported)."""
    source_dir = root / "probe-src"
    source_dir.mkdir(exist_ok=True)
    (source_dir / f"{PROBE_MODULE}.py").write_text(textwrap.dedent(PROBE_SOURCE), encoding="utf-8")
    sys.path.insert(0, str(source_dir))
    try:
        module = importlib.import_module(PROBE_MODULE)
        torch.manual_seed(seed)
        model = module.Probe().eval()
        example = torch.randn(2, 4)
        example[:, 3] = -1.0  # no sleeping while packing or while the server checks the examples
        path = root / f"probe-v{version}.ferry"
        manifest = torchferry.pack(
            model, path, example_inputs=(example,), name="probe", version=version, mode="python", fsync=False
        )
        assert manifest.kind == "python"
    finally:
        sys.path.remove(str(source_dir))
    return path, model


def probe_rows(count: int, *, delay: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Distinct valid probe rows; column 3 is the delay in seconds (<= 0: none)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(count, 4, generator=generator)
    rows[:, 0] = rows[:, 0].abs()  # never the failure sentinel
    rows[:, 3] = delay if delay > 0 else -rows[:, 3].abs() - 0.01
    return rows


def png_bytes(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def image_reference(array: np.ndarray[Any, Any], model: nn.Module) -> list[tuple[str, float]]:
    """What the image archive should answer for ``array``, computed by hand: resize the short
    side to 10 (bilinear), center-crop 8x8, scale to [0, 1], normalize, eager model, softmax, rank."""
    image = Image.fromarray(array).convert("RGB")
    width, height = image.size
    scale = 10 / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.Resampling.BILINEAR)
    left, top = (image.size[0] - 8) // 2, (image.size[1] - 8) // 2
    pixels = np.asarray(image.crop((left, top, left + 8, top + 8)), dtype=np.float32) / 255
    normalized = (pixels - np.array(IMAGE_MEAN, dtype=np.float32)) / np.array(IMAGE_STD, dtype=np.float32)
    x = torch.from_numpy(normalized.transpose(2, 0, 1).copy()).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()
    return [(IMAGE_LABELS[i], float(probs[i])) for i in order]


# ------------------------------------------------------------------------------------------ servers


@dataclass
class Server:
    """A running ``torchferry serve`` process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    args: tuple[str, ...]
    started_s: float
    """Seconds from launching the process to the server answering ready."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return request(self.port, method, path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return request(self.port, "GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return request(self.port, "POST", path, body, **kwargs)

    def metrics(self) -> Metrics:
        reply = self.get("/metrics")
        assert reply.status == 200, reply.text
        return Metrics.parse(reply.text)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait; SIGKILL the process group if it has not exited. Returns the exit status."""
        return stop_process(self.process, timeout_s)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its workers
            process.wait(10)
    return process.returncode


def serve_command(*args: str | os.PathLike[str]) -> list[str]:
    return [sys.executable, "-m", "torchferry.cli.main", "serve", *(os.fspath(a) for a in args)]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ours, without settings that would change the server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TORCHFERRY_API_TOKEN", "PROMETHEUS_MULTIPROC_DIR", "TORCHFERRY_SERVE_CONFIG")
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def launch(args: Sequence[str | os.PathLike[str]], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``torchferry serve ARGS`` in its own session, stdout and stderr into ``log_path``."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            serve_command(*args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env(),
            start_new_session=True,
        )


def start_server(
    args: Sequence[str | os.PathLike[str]], log_dir: Path, *, timeout_s: float = START_TIMEOUT_S
) -> Server:
    """Start a server on a free port and wait until ``/v2/health/ready`` answers 200."""
    args = [os.fspath(a) for a in args]
    if "--port" not in args:
        args += ["--port", "0"]
    log_path = log_dir / f"server-{uuid.uuid4().hex[:8]}.log"
    begin = time.monotonic()
    process = launch(args, log_path)
    try:
        port = _wait_for_port(process, log_path, begin + timeout_s)
        _wait_until_ready(process, port, log_path, begin + timeout_s)
    except BaseException:
        stop_process(process, 5)
        raise
    return Server(process, port, log_path, tuple(args), time.monotonic() - begin)


def _wait_for_port(process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> int:
    while time.monotonic() < deadline:
        found = _PORT_LINE.search(log_path.read_text(encoding="utf-8", errors="replace"))
        if found:
            return int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}) before listening:\n{_tail(log_path)}")
        time.sleep(0.05)
    raise RuntimeError(f"the server did not listen within the time limit:\n{_tail(log_path)}")


def _wait_until_ready(process: subprocess.Popen[bytes], port: int, log_path: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{_tail(log_path)}")
        with contextlib.suppress(OSError):
            if request(port, "GET", "/v2/health/ready", timeout=5).status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the server did not become ready within the time limit:\n{_tail(log_path)}")


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_server(args: Sequence[str | os.PathLike[str]], log_dir: Path) -> Iterator[Server]:
    """A server for the ``with`` block; stopped (by PID) when the block ends, whatever happens."""
    server = start_server(args, log_dir)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------ HTTP


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def timing(self) -> dict[str, dict[str, str]]:
        return server_timing(self.headers.get("server-timing", ""))

    def batch_size(self) -> int:
        return int(self.timing()["batch"]["desc"].strip('"'))


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT_S,
    connection: http.client.HTTPConnection | None = None,
) -> Reply:
    """One HTTP request on a new connection (or ``connection``); dicts and lists are sent as JSON."""
    sent = dict(headers or {})
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview)) and not hasattr(body, "__next__"):
        body = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    conn = connection or http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=sent, encode_chunked=hasattr(body, "__next__"))
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        if connection is None:
            conn.close()


def server_timing(header: str) -> dict[str, dict[str, str]]:
    """``queue;dur=0.3, batch;desc="4"`` → ``{"queue": {"dur": "0.3"}, "batch": {"desc": '"4"'}}``."""
    parsed: dict[str, dict[str, str]] = {}
    for entry in filter(None, (part.strip() for part in header.split(","))):
        name, *params = entry.split(";")
        parsed[name.strip()] = dict(p.strip().split("=", 1) for p in params if "=" in p)
    return parsed


def multipart(field_name: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field → (body, Content-Type header)."""
    boundary = f"----torchferry{uuid.uuid4().hex}"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def oip_json_request(name: str, rows: torch.Tensor | np.ndarray[Any, Any], datatype: str = "FP32") -> dict[str, Any]:
    array = rows.numpy() if isinstance(rows, torch.Tensor) else rows
    return {
        "inputs": [{"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.ravel().tolist()}]
    }


def oip_output(reply: Reply, name: str = "output") -> np.ndarray[Any, Any]:
    """The named output of a JSON OIP response, shaped."""
    output = next(o for o in reply.json()["outputs"] if o["name"] == name)
    return np.asarray(output["data"]).reshape(output["shape"])


def run_concurrently(calls: Sequence[Any], *, timeout_s: float = 60.0) -> list[Any]:
    """Run the zero-argument ``calls`` on one thread each, released together; their results in order.
    An exception in a call is returned in its place rather than raised."""
    results: list[Any] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def work(i: int) -> None:
        try:
            barrier.wait(timeout_s)
            results[i] = calls[i]()
        except Exception as exc:  # reported to the test, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    end = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "concurrent requests did not finish in time"
    return results


def assert_error(reply: Reply, status: int, error_type: str | None = None, *fragments: str) -> dict[str, Any]:
    """The reply is a JSON error with this status, type and message fragments; returns the body."""
    assert reply.status == status, f"expected {status}, got {reply.status}: {reply.text[:500]}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    body: dict[str, Any] = reply.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    if error_type is not None:
        assert body.get("type") == error_type, body
    for fragment in fragments:
        assert fragment in body["error"], f"{fragment!r} not in {body['error']!r}"
    assert reply.headers.get("x-request-id"), reply.headers
    return body


# ------------------------------------------------------------------------------------------ metrics


@dataclass
class Metrics:
    """Parsed Prometheus text: samples as (name, labels, value)."""

    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
        label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
        samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            found = line_re.match(line)
            if found:
                labels = dict(label_re.findall(found.group(2) or ""))
                samples.append((found.group(1), labels, float(found.group(3))))
        return cls(samples)

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(lab, v) for n, lab, v in self.samples if n == name and all(lab.get(k) == w for k, w in labels.items())]

    def total(self, name: str, **labels: str) -> float:
        return math.fsum(v for _, v in self.find(name, **labels))

    def names(self) -> set[str]:
        return {n for n, _, _ in self.samples}
