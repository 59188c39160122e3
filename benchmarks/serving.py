"""Serving benchmark: ``torchferry serve`` against a naive FastAPI app, the seed-002 Flask app and no HTTP at all.

One run, on a 2-core machine: every server is pinned to core 1 (``taskset -c 1``), the load
generator, ``wrk`` with one thread, to core 0, and torch computes on one thread everywhere.
Three models (``serving_apps/bench_models.py``): an Iris MLP 4 -> 16 -> 3 (a forward costs
microseconds: serving it measures overhead), LeNet on 3 x 32 x 32, and ResNet-18 on
3 x 64 x 64 (a forward costs milliseconds: compute-bound). Every server gets the same body,
``{"inputs": [[...one sample, batch dimension 1...]]}``, posted to ``/predict/{model}``:

* **in-process limit**: the module's forward at batch 1 and at batch 32 on one thread, no
  HTTP (per-forward latency, and rows/s, the req/s it would be worth); for context also the
  loaded ``.ferry``'s forward and the whole request path without HTTP (JSON -> tensors ->
  forward -> JSON);
* **naive FastAPI** (``serving_apps/fastapi_app.py``): one request = one forward, uvicorn,
  one worker;
* **Flask** as seed 002 writes it (``serving_apps/flask_app.py``): ``request.get_json()`` ->
  tensor -> model -> ``jsonify``, on Flask's own threaded development server (``app.run``);
* **torchferry**: ``torchferry serve *.ferry --torch-threads 1 --max-batch-size 32
  --max-delay-ms D``, D in {0, 1, 2} (the default, 2, in the headline table; 0 and 1 at
  concurrency 64).

Each server serves the three models in one process, and all five (FastAPI, Flask, torchferry
with D = 0, 1, 2) are up at once, idle but for the one under load. For each model and each
concurrency (1, 16, 64 connections), the servers due in that slot run back to back, in an
order rotated from slot to slot: wrk runs 1 s untimed, the server finishes what that left in
flight, then wrk runs ``--duration`` seconds measured and its Lua ``done()`` prints req/s,
latency percentiles and errors as JSON. The server's CPU time and,
for torchferry, its Triton-style statistics (batches run, rows per batch, queue and compute
time) are read before and after. Then the resident memory of ``torchferry serve --workers 2``
against one worker on the ResNet-18 archive (RSS, PSS, USS, and the archive's own mapping),
and, when it can run, perf_analyzer against torchferry's Open Inference Protocol endpoint.

    python benchmarks/serving.py --out docs     # what `make bench` runs (6-7 minutes)
    python benchmarks/serving.py --quick        # smoke test; writes under benchmarks/.work/quick-serving
    python benchmarks/serving.py --from-json docs/serving_bench.json   # re-render only

The numbers are reported, never judged pass/fail: this is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import torch
from _report import meminfo_gib, replace_block

import torchferry
from torchferry.serving.responses import to_jsonable

ROOT = Path(__file__).resolve().parent.parent
APPS_DIR = ROOT / "benchmarks" / "serving_apps"
sys.path.insert(0, str(APPS_DIR))
from bench_models import INPUT_SHAPES, MODELS, build  # noqa: E402

WORK_DIR = ROOT / "benchmarks" / ".work"
CACHE_DIR = WORK_DIR / "cache"
"""perf_analyzer and libcudart, unpacked from their PyPI wheels (git-ignored, kept between runs)."""
DOC_NAME = "benchmarks.md"
JSON_NAME = "serving_bench.json"
PLOT_NAME = Path("img") / "serving.png"
DOC_START = "<!-- serving-results:start -->"
DOC_END = "<!-- serving-results:end -->"

SERVER_CORE, LOAD_CORE = 1, 0
CONCURRENCY = (1, 16, 64)
SWEEP_CONCURRENCY = (64,)
"""Where the other --max-delay-ms values run: at concurrency 1 the model is always idle, and an
idle model runs a request at once whatever the delay; 64 is where a delay can fill batches."""
DELAYS_MS = (0.0, 1.0, 2.0)
HEADLINE_DELAY_MS = 0.0  # the server default
"""The server's default; the sweep shows 0 and 1 beside it."""
MAX_BATCH_SIZE = 32
DURATION_S, WARMUP_S = 8, 1
QUICK_DURATION_S = 2
WRK_TIMEOUT = "5s"
READY_TIMEOUT_S, STOP_TIMEOUT_S = 90.0, 20.0
IDLE_PROBE_S, IDLE_SHARE, IDLE_LIMIT_S = 0.25, 0.1, 20.0
"""After a warm-up, wait (at most 20 s) until the server uses under 10% of its core over 0.25 s."""
IN_PROCESS_MIN_S = 1.5
IN_PROCESS_BATCHES = (1, 32)
MEMORY_MODEL = "resnet18"
PERF_ANALYZER_VERSION = "2.41.0"
PERF_ANALYZER_MODEL = "iris"
PERF_ANALYZER_STABILITY = 100
"""perf_analyzer's default (10%: three windows in a row within 10% of each other) is never reached on this
shared machine; it then gives up without a figure. At 100% it reports after three windows."""
SERVER_LABELS = {
    "fastapi": "naive FastAPI (uvicorn, 1 worker)",
    "flask": "Flask (seed 002, app.run threaded)",
    "torchferry": "torchferry serve",
}
MODEL_LABELS = {"iris": "Iris MLP", "lenet": "LeNet", "resnet18": "ResNet-18"}
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SERVING_BENCH_TORCH_THREADS": "1"}

WRK_SCRIPT = """-- written by benchmarks/serving.py: POST one JSON body, print the results as JSON when done
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "min_us": %d, "mean_us": %.1f, "stdev_us": %.1f, "max_us": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass(frozen=True)
class Settings:
    duration_s: float = DURATION_S
    warmup_s: float = WARMUP_S
    concurrency: tuple[int, ...] = CONCURRENCY
    sweep_concurrency: tuple[int, ...] = SWEEP_CONCURRENCY
    delays_ms: tuple[float, ...] = DELAYS_MS
    headline_delay_ms: float = HEADLINE_DELAY_MS
    in_process_min_s: float = IN_PROCESS_MIN_S
    perf_analyzer: bool = True


@dataclass
class Files:
    """Everything the servers and wrk read, in one scratch directory."""

    work: Path
    weights: Path
    archives: dict[str, Path] = field(default_factory=dict)
    bodies: dict[str, Path] = field(default_factory=dict)
    scripts: dict[str, Path] = field(default_factory=dict)
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    expected: dict[str, torch.Tensor] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def prepare(work: Path) -> Files:
    """State dicts for the baselines, ``.ferry`` archives of the same modules, one body and wrk script per model."""
    files = Files(work=work, weights=work / "weights")
    files.weights.mkdir(parents=True)
    for name in MODELS:
        model = build(name)
        torch.save(model.state_dict(), files.weights / f"{name}.pt")
        example = torch.randn(1, *INPUT_SHAPES[name])
        files.archives[name] = work / f"{name}.ferry"
        torchferry.pack(model, files.archives[name], example_inputs=(example,), name=name)
        generator = torch.Generator().manual_seed(1)
        sample = np.round(torch.randn(1, *INPUT_SHAPES[name], generator=generator).numpy(), 4)
        files.bodies[name] = work / f"{name}.json"
        files.bodies[name].write_bytes(json.dumps({"inputs": sample.tolist()}).encode())
        files.samples[name] = torch.from_numpy(sample).float()
        with torch.inference_mode():
            files.expected[name] = model(files.samples[name])
        files.scripts[name] = work / f"{name}.lua"
        files.scripts[name].write_text(WRK_SCRIPT.format(body=files.bodies[name]))
    return files


# ----------------------------------------------------------------------------- in-process limit


def _time_calls(calls: dict[str, Callable[[], Any]], min_s: float, min_calls: int = 10) -> dict[str, list[float]]:
    """Time the ``calls`` in turn, one call each per round, for ``min_s`` seconds each and at least ``min_calls``
    rounds: interleaved, so that a busy moment of this shared machine falls on all of them alike."""
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    end = time.perf_counter() + min_s * len(calls)
    while time.perf_counter() < end or min(map(len, samples.values())) < min_calls:
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            samples[key].append(time.perf_counter() - start)
    return samples


def _summary(samples: list[float], rows: int) -> dict[str, float]:
    """Median per call, and rows/s from the median: on a shared machine the mean carries other jobs' bursts."""
    median = statistics.median(samples)
    return {
        "calls": len(samples),
        "median_ms": 1e3 * median,
        "mean_ms": 1e3 * statistics.fmean(samples),
        "min_ms": 1e3 * min(samples),
        "rows_per_s": rows / median,
    }


def request_path(packaged: Any, body: bytes) -> Callable[[], bytes]:
    """What a server must do per request, without HTTP: parse, check, forward, encode."""

    def call() -> bytes:
        payload = orjson.loads(body)
        tensors, single = packaged.prepare(payload["inputs"])
        outputs = packaged.finish(packaged.run(tensors), single)
        return orjson.dumps({"outputs": to_jsonable(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY)

    return call


def in_process(files: Files, min_s: float) -> dict[str, Any]:
    """Forward latency and rows/s on one thread, pinned to the servers' core; no HTTP."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CORE})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    try:
        for name in MODELS:
            model = build(name)
            packaged = torchferry.load_model(files.archives[name])
            entry: dict[str, Any] = {}
            for batch in IN_PROCESS_BATCHES:
                x = torch.randn(batch, *INPUT_SHAPES[name])

                def eager(model: torch.nn.Module = model, x: torch.Tensor = x) -> Any:
                    with torch.inference_mode():
                        return model(x)

                calls = {"module": eager, "ferry": lambda p=packaged, x=x: p.run([x])}
                if batch == 1:
                    calls["request_path"] = request_path(packaged, files.bodies[name].read_bytes())
                for key, samples in _time_calls(calls, min_s).items():
                    entry[f"{key}_b{batch}"] = _summary(samples, batch)
            results[name] = entry
    finally:
        torch.set_num_threads(threads)
        os.sched_setaffinity(0, previous)
    return results


# ----------------------------------------------------------------------------- processes


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed: apt-get install -y {name}")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_call(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@dataclass
class Server:
    kind: str
    variant: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any]

    def cpu_seconds(self) -> float:
        """User + system time of the server process (every thread); worker processes included."""
        total = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.process.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
        return total


def server_command(kind: str, files: Files, port: int, options: dict[str, Any]) -> tuple[list[str], str]:
    """The command line (pinned to the server core) and the readiness path of one server."""
    python = sys.executable
    if kind == "fastapi":
        command = [python, "-m", "uvicorn", "fastapi_app:app", "--app-dir", str(APPS_DIR)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        ready = "/health"
    elif kind == "flask":
        command, ready = [python, str(APPS_DIR / "flask_app.py"), "--port", str(port)], "/health"
    else:
        models = options.get("models", list(MODELS))
        command = [str(Path(python).parent / "torchferry"), "serve", *(str(files.archives[m]) for m in models)]
        command += ["--port", str(port), "--torch-threads", "1", "--max-batch-size", str(MAX_BATCH_SIZE)]
        command += ["--max-delay-ms", f"{options.get('max_delay_ms', HEADLINE_DELAY_MS):g}"]
        command += ["--workers", str(options.get("workers", 1))]
        ready = "/v2/health/ready"
    return [_tool("taskset"), "-c", str(SERVER_CORE), *command], ready


def _wait_ready(server: Server, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {server.process.returncode}:\n{_tail(server.log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_call(server.port, "GET", path, timeout=2.0)[0] == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{server.kind} was not ready after {READY_TIMEOUT_S:.0f} s:\n{_tail(server.log)}")


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after a timeout; children (uvicorn workers) by their own PIDs."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.is_running():
                child.terminate()
                child.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(psutil.Error):
            if child.is_running():
                child.kill()


@contextlib.contextmanager
def running_server(kind: str, variant: str, files: Files, options: dict[str, Any]) -> Iterator[Server]:
    port = _free_port()
    command, ready = server_command(kind, files, port, options)
    log = files.work / f"{kind}-{variant}.log"
    env = {**os.environ, **THREAD_ENV, "SERVING_BENCH_WEIGHTS": str(files.weights), "PYTHONPATH": str(APPS_DIR)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=files.work)
    server = Server(kind, variant, port, process, log, {"command": command[3:], **options})
    try:
        _wait_ready(server, ready)
        yield server
    finally:
        stop(process)


# ----------------------------------------------------------------------------- load


def run_wrk(port: int, script: Path, path: str, connections: int, duration_s: float) -> dict[str, Any]:
    command = [_tool("taskset"), "-c", str(LOAD_CORE), _tool("wrk"), "-t1", f"-c{connections}"]
    command += [f"-d{duration_s:g}s", "--timeout", WRK_TIMEOUT, "--latency", "-s", str(script)]
    command += [f"http://127.0.0.1:{port}{path}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    return raw


def _stats(server: Server, model: str) -> dict[str, Any] | None:
    if server.kind != "torchferry":
        return None
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        status, body = http_call(server.port, "GET", f"/v2/models/{model}/stats")
        if status == 200:
            stats: dict[str, Any] = json.loads(body)["model_stats"][0]
            return stats
    return None


def _batch_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """What torchferry's batcher did during the measured window."""
    if before is None or after is None:
        return None
    executions = after["execution_count"] - before["execution_count"]
    rows = after["inference_count"] - before["inference_count"]
    stat = {key: {k: after["inference_stats"][key][k] - before["inference_stats"][key][k] for k in ("count", "ns")}
            for key in ("success", "queue", "compute_infer")}  # fmt: skip
    requests = stat["success"]["count"]
    sizes: dict[int, int] = {}
    for entry in after["batch_stats"]:
        old = next((b for b in before["batch_stats"] if b["batch_size"] == entry["batch_size"]), None)
        count = entry["compute_infer"]["count"] - (old["compute_infer"]["count"] if old else 0)
        if count:
            sizes[entry["batch_size"]] = count
    infer_ns = sum(b["compute_infer"]["ns"] for b in after["batch_stats"])
    infer_ns -= sum(b["compute_infer"]["ns"] for b in before["batch_stats"])
    return {
        "executions": executions,
        "rows": rows,
        "mean_batch": rows / executions if executions else 0.0,
        "batch_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "forward_ms_per_batch": infer_ns / 1e6 / executions if executions else 0.0,
        "forward_s_total": infer_ns / 1e9,
        "queue_ms_per_request": stat["queue"]["ns"] / 1e6 / requests if requests else 0.0,
        "handler_ms_per_request": stat["success"]["ns"] / 1e6 / requests if requests else 0.0,
    }


def wait_idle(server: Server, limit_s: float = IDLE_LIMIT_S) -> float:
    """Wait until the server has finished what the warm-up left in flight (wrk does not wait for its last
    answers, and a server keeps working on them: 64 ResNet-18 requests are seconds of work)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        before = server.cpu_seconds()
        time.sleep(IDLE_PROBE_S)
        if server.cpu_seconds() - before < IDLE_SHARE * IDLE_PROBE_S:
            break
    return time.monotonic() - start


def measure(server: Server, files: Files, model: str, connections: int, settings: Settings) -> dict[str, Any]:
    """One wrk run (after an untimed warm-up) against one model, with the server's CPU time and batching."""
    script, path = files.scripts[model], f"/predict/{model}"
    run_wrk(server.port, script, path, connections, settings.warmup_s)
    wait_idle(server)
    before, cpu_before = _stats(server, model), server.cpu_seconds()
    raw = run_wrk(server.port, script, path, connections, settings.duration_s)
    cpu = server.cpu_seconds() - cpu_before
    duration = raw["duration_us"] / 1e6
    socket_errors = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "server": server.kind,
        "variant": server.variant,
        "model": model,
        "concurrency": connections,
        "max_delay_ms": server.info.get("max_delay_ms"),
        "req_per_s": (raw["requests"] - raw["status"]) / duration,
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": raw["mean_us"] / 1e3,
        "max_ms": raw["max_us"] / 1e3,
        "errors": raw["status"] + socket_errors,
        "status_errors": raw["status"],
        "socket_errors": socket_errors,
        "server_cpu_s": cpu,
        "server_cpu_share": cpu / duration,
        "batching": _batch_delta(before, _stats(server, model)),
        "loadavg_1min_after": os.getloadavg()[0],
        "wrk": raw,
    }


def check_answers(server: Server, files: Files) -> None:
    """Every server must answer what the module computes, before anything is timed."""
    for model in MODELS:
        status, body = http_call(server.port, "POST", f"/predict/{model}", files.bodies[model].read_bytes())
        if status != 200:
            raise RuntimeError(f"{server.kind} answered {status} for {model}: {body[:300]!r}")
        outputs = json.loads(body)["outputs"]
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        if not torch.allclose(torch.tensor(outputs), files.expected[model], rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"{server.kind} answered differently from the module for {model}")


def server_runs(files: Files, settings: Settings) -> list[dict[str, Any]]:
    """Every server, model and concurrency of the run. All servers are up at once (idle ones cost their core
    nothing) and each (model, concurrency) slot measures them back to back, in an order rotated every slot, so
    that a busy spell of this shared machine lands on one slot's servers alike, not on one server."""
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("fastapi", "default", {}),
        ("flask", "default", {}),
        *(("torchferry", f"delay={delay:g}", {"max_delay_ms": delay}) for delay in settings.delays_ms),
    ]
    runs = []
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(kind, name, files, opts)) for kind, name, opts in variants]
        for server in servers:
            check_answers(server, files)
        slots = [(model, connections) for model in MODELS for connections in settings.concurrency]
        for index, (model, connections) in enumerate(slots):
            due = [s for s in servers if _runs_at(s, connections, settings)]
            for server in due[index % len(due) :] + due[: index % len(due)]:
                run = measure(server, files, model, connections, settings)
                run["headline"] = server.info.get("max_delay_ms", settings.headline_delay_ms) == (
                    settings.headline_delay_ms
                )
                runs.append(run)
                print(
                    f"{server.kind:10} {server.variant:9} {model:8} c={connections:<3} {run['req_per_s']:9.1f} req/s "
                    f"p50 {run['p50_ms']:8.2f} ms p99 {run['p99_ms']:8.2f} ms errors {run['errors']} "
                    f"cpu {run['server_cpu_share']:.2f}",
                    flush=True,
                )
    return runs


def _runs_at(server: Server, connections: int, settings: Settings) -> bool:
    """The baselines and the headline torchferry run at every concurrency, the other delays at the sweep's."""
    delay = server.info.get("max_delay_ms")
    return delay is None or delay == settings.headline_delay_ms or connections in settings.sweep_concurrency


# ----------------------------------------------------------------------------- memory


def _worker_processes(server: Server) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    if server.info.get("workers", 1) == 1:
        return [root]
    return [p for p in root.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]


def _archive_mapping(proc: psutil.Process, archive: Path) -> dict[str, int]:
    found = {"rss": 0, "pss": 0, "shared": 0, "private": 0}
    for region in proc.memory_maps(grouped=True):
        if Path(region.path) == archive:
            found["rss"] += region.rss
            found["pss"] += region.pss
            found["shared"] += region.shared_clean + region.shared_dirty
            found["private"] += region.private_clean + region.private_dirty
    return found


def _loaded_workers(server: Server, archive: Path, workers: int, files: Files) -> list[psutil.Process]:
    """The worker processes once each has served requests (its archive mapping resident)."""
    procs: list[psutil.Process] = []
    for _ in range(10):
        run_wrk(server.port, files.scripts[MEMORY_MODEL], f"/predict/{MEMORY_MODEL}", 16, 2)
        procs = _worker_processes(server)
        if len(procs) == workers and all(_archive_mapping(p, archive)["rss"] > 0 for p in procs):
            return procs
    raise RuntimeError(f"{workers} workers did not all serve {MEMORY_MODEL}: {len(procs)} found")


def memory(files: Files) -> dict[str, Any]:
    """RSS, PSS and USS of torchferry's workers serving ResNet-18, with 1 and with 2 workers."""
    archive = files.archives[MEMORY_MODEL].resolve()
    results: dict[str, Any] = {"model": MEMORY_MODEL, "archive_bytes": archive.stat().st_size}
    for workers in (1, 2):
        options = {"workers": workers, "models": [MEMORY_MODEL], "max_delay_ms": HEADLINE_DELAY_MS}
        with running_server("torchferry", f"workers={workers}", files, options) as server:
            procs = _loaded_workers(server, archive, workers, files)
            per_worker = []
            for proc in procs:
                full = proc.memory_full_info()
                per_worker.append(
                    {
                        "pid": proc.pid,
                        "rss": full.rss,
                        "pss": full.pss,
                        "uss": full.uss,
                        "archive_mapping": _archive_mapping(proc, archive),
                    }
                )
            supervisor = psutil.Process(server.process.pid) if workers > 1 else None
            results[f"workers_{workers}"] = {
                "workers": per_worker,
                "supervisor_rss": supervisor.memory_full_info().rss if supervisor else 0,
                "supervisor_uss": supervisor.memory_full_info().uss if supervisor else 0,
                **{f"{k}_sum": sum(w[k] for w in per_worker) for k in ("rss", "pss", "uss")},
                "archive_rss_sum": sum(w["archive_mapping"]["rss"] for w in per_worker),
                "archive_pss_sum": sum(w["archive_mapping"]["pss"] for w in per_worker),
            }
    return results


# ----------------------------------------------------------------------------- perf_analyzer


def _unzip_member(wheel: Path, member: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, target.open("wb") as out:
        shutil.copyfileobj(source, out)
    target.chmod(0o755)


def _download(spec: str, cache: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(cache)]
    subprocess.run(command, check=True, timeout=300, capture_output=True)
    name = spec.split("=")[0].replace("-", "_")
    return next(p for p in sorted(cache.glob("*.whl")) if p.name.lower().startswith(name))


def setup_perf_analyzer(cache: Path) -> tuple[Path, dict[str, str]]:
    """perf_analyzer from the tritonclient wheel and libcudart.so.12 from PyPI; raises with the reason."""
    binary, libs = cache / "perf_analyzer", cache / "lib"
    libs.mkdir(parents=True, exist_ok=True)
    if not binary.exists():
        wheel = _download(f"tritonclient=={PERF_ANALYZER_VERSION}", cache)
        _unzip_member(wheel, f"tritonclient-{PERF_ANALYZER_VERSION}.data/data/bin/perf_analyzer", binary)
    if not (libs / "libcudart.so.12").exists():
        wheel = _download("nvidia-cuda-runtime-cu12", cache)
        _unzip_member(wheel, "nvidia/cuda_runtime/lib/libcudart.so.12", libs / "libcudart.so.12")
    env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
    linked = subprocess.run([_tool("ldd"), str(binary)], capture_output=True, text=True, env=env, check=False)
    missing = [row.split()[0] for row in linked.stdout.splitlines() if "not found" in row]
    if missing:
        hint = " (apt-get install -y libb64-0d)" if any("libb64" in m for m in missing) else ""
        raise RuntimeError(f"perf_analyzer cannot start: {', '.join(missing)} not found{hint}")
    return binary, env


def perf_analyzer(files: Files, cache: Path) -> dict[str, Any]:
    """perf_analyzer (Open Inference Protocol over HTTP) against torchferry serving Iris, concurrency 1 to 4."""
    try:
        binary, env = setup_perf_analyzer(cache)
    except (RuntimeError, OSError, subprocess.SubprocessError, StopIteration, zipfile.BadZipFile) as exc:
        return {"ran": False, "reason": f"{type(exc).__name__}: {exc}"}
    report = files.work / "perf_analyzer.csv"
    options = {"max_delay_ms": HEADLINE_DELAY_MS, "models": [PERF_ANALYZER_MODEL]}
    with running_server("torchferry", "perf_analyzer", files, options) as server:
        command = [_tool("taskset"), "-c", str(LOAD_CORE), str(binary), "-m", PERF_ANALYZER_MODEL]
        command += ["-u", f"127.0.0.1:{server.port}", "-i", "http", "--concurrency-range", "1:4"]
        command += ["--measurement-interval", "3000", "--stability-percentage", str(PERF_ANALYZER_STABILITY)]
        command += ["-f", str(report)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    if done.returncode != 0 or not report.exists():
        return {"ran": False, "reason": f"perf_analyzer exited {done.returncode}: {(done.stdout + done.stderr)[-600:]}"}
    with report.open() as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: int(r["Concurrency"]))
    parts = ("Client Send", "Network+Server Send/Recv", "Server Queue", "Server Compute Input", "Server Compute Infer")
    parts += ("Server Compute Output", "Client Recv")  # their sum is the average latency (2.41 has no such column)
    table = [
        {
            "concurrency": int(r["Concurrency"]),
            "infer_per_s": float(r["Inferences/Second"]),
            "avg_us": sum(float(r[k]) for k in parts if k in r),
            "p50_us": float(r.get("p50 latency", 0)),
            "p99_us": float(r.get("p99 latency", 0)),
            "server_queue_us": float(r.get("Server Queue", 0)),
            "server_infer_us": float(r.get("Server Compute Infer", 0)),
        }
        for r in rows
    ]
    return {"ran": True, "command": command[3:], "rows": table}


# ----------------------------------------------------------------------------- report


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_info() -> dict[str, Any]:
    """The commit of the code measured, and whether src/ differed from it (several people edit this repository)."""
    git = shutil.which("git")
    if git is None:
        return {"commit": "unknown", "src_modified": None}
    head = subprocess.run([git, "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    status = subprocess.run(
        [git, "-C", str(ROOT), "status", "--porcelain", "--", "src"], capture_output=True, text=True, check=False
    )
    return {"commit": head.stdout.strip() or "unknown", "src_modified": bool(status.stdout.strip())}


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    wrk = subprocess.run([_tool("wrk"), "-v"], capture_output=True, text=True, check=False)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": meminfo_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchferry": torchferry.__version__,
        "wrk": (wrk.stdout + wrk.stderr).split("[")[0].strip(),
        **{p: _version(p) for p in ("fastapi", "uvicorn", "uvloop", "httptools", "flask", "werkzeug", "orjson")},
    }


def _headline(results: dict[str, Any], server: str, model: str, connections: int) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in results["runs"]
            if r["headline"] and r["server"] == server and r["model"] == model and r["concurrency"] == connections
        ),
        None,
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's three targets, computed from this run."""
    top = max(results["config"]["concurrency"])
    rows: list[dict[str, Any]] = []
    ferry, naive = _headline(results, "torchferry", "iris", top), _headline(results, "fastapi", "iris", top)
    if ferry and naive:
        ratio = ferry["req_per_s"] / naive["req_per_s"]
        rows.append({
            "target": f"Iris, concurrency {top}: >= 3x the naive FastAPI app's req/s, with a lower p99",
            "value": f"{ratio:.2f}x ({ferry['req_per_s']:.0f} vs {naive['req_per_s']:.0f} req/s); p99 "
            f"{ferry['p99_ms']:.1f} vs {naive['p99_ms']:.1f} ms",
            "met": ratio >= 3 and ferry["p99_ms"] < naive["p99_ms"],
        })  # fmt: skip
    ferry, limits = _headline(results, "torchferry", "resnet18", top), results["in_process"]["resnet18"]
    if ferry:
        share = ferry["req_per_s"] / limits["module_b32"]["rows_per_s"]
        own = ferry["req_per_s"] / limits["ferry_b32"]["rows_per_s"]
        rows.append({
            "target": f"ResNet-18, concurrency {top}: >= 85% of the in-process batch-32 throughput",
            "value": f"{100 * share:.0f}% ({ferry['req_per_s']:.1f} req/s vs {limits['module_b32']['rows_per_s']:.1f} "
            f"rows/s); {100 * own:.0f}% of the .ferry's own batch-32 forward "
            f"({limits['ferry_b32']['rows_per_s']:.1f} rows/s)",
            "met": share >= 0.85,
        })  # fmt: skip
    ferry, forward = _headline(results, "torchferry", "iris", 1), results["in_process"]["iris"]["module_b1"]
    if ferry:
        added = ferry["p50_ms"] - forward["median_ms"]
        rows.append({
            "target": "Iris, concurrency 1: wrk p50 - in-process batch-1 forward <= 1 ms",
            "value": f"{added:.2f} ms ({ferry['p50_ms']:.2f} ms - {forward['median_ms']:.3f} ms)",
            "met": added <= 1.0,
        })  # fmt: skip
    return rows


def _errors(run: dict[str, Any]) -> str:
    if not run["errors"]:
        return "0"
    return f"**{run['errors']}** ({run['status_errors']} status, {run['socket_errors']} socket)"


def _runs_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | server | concurrency | req/s | p50 ms | p99 ms | errors | server CPU | mean batch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    headline = [r for r in results["runs"] if r["headline"]]
    order = {name: i for i, name in enumerate(SERVER_LABELS)}
    for run in sorted(headline, key=lambda r: (list(MODELS).index(r["model"]), r["concurrency"], order[r["server"]])):
        label = SERVER_LABELS[run["server"]]
        if run["server"] == "torchferry":
            label += f" (delay {run['max_delay_ms']:g} ms)"
        batch = f"{run['batching']['mean_batch']:.1f}" if run["batching"] else ""
        lines.append(
            f"| {MODEL_LABELS[run['model']]} | {label} | {run['concurrency']} | {run['req_per_s']:.0f} "
            f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {_errors(run)} | {100 * run['server_cpu_share']:.0f}% "
            f"| {batch} |"
        )
    return lines


def _sweep_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | concurrency | --max-delay-ms | req/s | p50 ms | p99 ms | errors | mean batch "
        "| forward ms / batch | queue ms / request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sweep = results["config"]["sweep_concurrency"]
    runs = [r for r in results["runs"] if r["server"] == "torchferry" and r["concurrency"] in sweep]
    for run in sorted(runs, key=lambda r: (list(MODELS).index(r["model"]), r["concurrency"], r["max_delay_ms"])):
        b = run["batching"] or {}
        lines.append(
            f"| {MODEL_LABELS[run['model']]} | {run['concurrency']} | {run['max_delay_ms']:g} | {run['req_per_s']:.0f} "
            f"| {run['p50_ms']:.2f} | {run['p99_ms']:.2f} | {_errors(run)} | {b.get('mean_batch', 0):.1f} "
            f"| {b.get('forward_ms_per_batch', 0):.2f} | {b.get('queue_ms_per_request', 0):.2f} |"
        )
    return lines


def _in_process_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| model | module b1 ms | b1 rows/s | module b32 ms | b32 rows/s | .ferry b1 ms | .ferry b32 ms "
        "| .ferry b32 rows/s | request path b1 ms (JSON -> forward -> JSON) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model, entry in results["in_process"].items():
        lines.append(
            f"| {MODEL_LABELS[model]} | {entry['module_b1']['median_ms']:.3f} | {entry['module_b1']['rows_per_s']:.0f} "
            f"| {entry['module_b32']['median_ms']:.3f} | {entry['module_b32']['rows_per_s']:.0f} "
            f"| {entry['ferry_b1']['median_ms']:.3f} | {entry['ferry_b32']['median_ms']:.3f} "
            f"| {entry['ferry_b32']['rows_per_s']:.0f} | {entry['request_path_b1']['median_ms']:.3f} |"
        )
    return lines


def _memory_table(mem: dict[str, Any]) -> list[str]:
    mib = 2**20
    lines = [
        f"| torchferry serve, {MODEL_LABELS[mem['model']]} ({mem['archive_bytes'] / mib:.1f} MiB archive) "
        "| worker processes | RSS sum MiB | PSS sum MiB | USS sum MiB | USS per worker MiB "
        "| archive mapping: RSS sum MiB | PSS sum MiB | shared per worker MiB | supervisor RSS (USS) MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in (1, 2):
        m = mem.get(f"workers_{workers}")
        if not m:
            continue
        uss = ", ".join(f"{w['uss'] / mib:.0f}" for w in m["workers"])
        shared = ", ".join(f"{w['archive_mapping']['shared'] / mib:.1f}" for w in m["workers"])
        supervisor = (
            f"{m['supervisor_rss'] / mib:.0f} ({m['supervisor_uss'] / mib:.0f})" if m.get("supervisor_rss") else ""
        )
        lines.append(
            f"| --workers {workers} | {len(m['workers'])} | {m['rss_sum'] / mib:.0f} | {m['pss_sum'] / mib:.0f} "
            f"| {m['uss_sum'] / mib:.0f} | {uss} | {m['archive_rss_sum'] / mib:.1f} | {m['archive_pss_sum'] / mib:.1f} "
            f"| {shared} | {supervisor} |"
        )
    return lines


def _perf_table(perf: dict[str, Any]) -> list[str]:
    if not perf.get("ran"):
        return [f"perf_analyzer did not run: {perf.get('reason', 'skipped')}"]
    lines = [
        f"perf_analyzer {PERF_ANALYZER_VERSION} (`perf_analyzer {' '.join(perf['command'][1:])}`, pinned to core "
        f"{LOAD_CORE}), Iris on torchferry:",
        "",
        "| concurrency | infer/s | avg latency ms | p50 ms | p99 ms | server queue ms | server compute ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in perf["rows"]:
        lines.append(
            f"| {row['concurrency']} | {row.get('infer_per_s', 0):.0f} | {row.get('avg_us', 0) / 1e3:.2f} "
            f"| {row.get('p50_us', 0) / 1e3:.2f} | {row.get('p99_us', 0) / 1e3:.2f} "
            f"| {row.get('server_queue_us', 0) / 1e3:.3f} | {row.get('server_infer_us', 0) / 1e3:.3f} |"
        )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    cfg, machine = results["config"], results["machine"]
    head = (
        f"Run {cfg['date']}: each server pinned to core {SERVER_CORE}, wrk ({machine['wrk']}, 1 thread) to core "
        f"{LOAD_CORE}; {cfg['duration_s']:g} s per run after {cfg['warmup_s']:g} s untimed; torch on 1 thread; "
        f"torchferry --max-batch-size {MAX_BATCH_SIZE}, --max-delay-ms {cfg['headline_delay_ms']:g} in the first "
        f"table. Machine: {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB RAM, Linux "
        f"{machine['kernel']}, Python {machine['python']}, torch {machine['torch']}, torchferry "
        f"{machine['torchferry']}, FastAPI {machine['fastapi']}, uvicorn {machine['uvicorn']} (uvloop "
        f"{machine['uvloop']}, httptools {machine['httptools']}), Flask {machine['flask']} (Werkzeug "
        f"{machine['werkzeug']}). Load average before/after: {cfg['loadavg_before'][0]:.2f}/"
        f"{cfg['loadavg_after'][0]:.2f}. Whole run: {cfg['elapsed_s']:.0f} s."
    )
    source = results.get("source")
    if source:
        modified = " (src/ modified)" if source.get("src_modified") else ""
        head += f" Code measured: commit {source['commit'][:7]}{modified}."
    target_lines = ["| target (from the issue) | this run | met |", "|---|---|---|"]
    target_lines += [f"| {t['target']} | {t['value']} | {'yes' if t['met'] else '**no**'} |" for t in targets(results)]
    parts = [
        head,
        "",
        *_runs_table(results),
        "",
        "In-process limit (no HTTP, one thread, core 1; median per call; rows/s = batch / median):",
        "",
        *_in_process_table(results),
        "",
        f"torchferry's --max-delay-ms at concurrency {', '.join(map(str, cfg['sweep_concurrency']))} (batcher "
        "statistics from `/v2/models/{name}/stats` over the measured window):",
        "",
        *_sweep_table(results),
        "",
        *_memory_table(results["memory"]),
        "",
        *_perf_table(results["perf_analyzer"]),
        "",
        *target_lines,
    ]
    return "\n".join(parts)


SERVER_STYLE = {"fastapi": ("tab:orange", "s"), "flask": ("tab:gray", "^"), "torchferry": ("tab:blue", "o")}


def _server_runs(results: dict[str, Any], server: str, model: str) -> list[dict[str, Any]]:
    runs = (r for r in results["runs"] if r["headline"] and r["server"] == server and r["model"] == model)
    return sorted(runs, key=lambda r: r["concurrency"])


def _limits(axis: Any, limits: dict[str, Any], top: float) -> float:
    """The in-process rows/s as lines, or as a note when they would squash the servers' curves; the highest line."""
    notes, highest = [], 0.0
    for key, style in (("module_b1", ":"), ("module_b32", "--")):
        value, batch = limits[key]["rows_per_s"], key.split("_b")[1]
        if value <= 5 * top:
            axis.axhline(value, color="tab:green", linestyle=style, linewidth=1.2)
            highest = max(highest, value)
            label = f"in-process, batch {batch}: {value:,.0f} rows/s"
            axis.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), xytext=(0, 3),
                          textcoords="offset points", fontsize=8, color="tab:green")  # fmt: skip
        else:
            notes.append(f"batch {batch}: {value:,.0f} rows/s")
    if notes:
        axis.text(0.01, 0.02, "in-process (off scale): " + ", ".join(notes), transform=axis.transAxes, fontsize=8,
                  color="tab:green", va="bottom")  # fmt: skip
    return highest


def write_plot(results: dict[str, Any], path: Path) -> None:
    """req/s (with the in-process limits) and p99 by concurrency, per model and server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["in_process"])
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 8.5), constrained_layout=True, squeeze=False)
    for column, model in enumerate(models):
        rate, tail = axes[0][column], axes[1][column]
        top, bottom = 0.0, float("inf")
        for server, (color, marker) in SERVER_STYLE.items():
            runs = _server_runs(results, server, model)
            xs = [str(r["concurrency"]) for r in runs]
            for axis, key in ((rate, "req_per_s"), (tail, "p99_ms")):
                values = [r[key] for r in runs]
                axis.plot(xs, values, color=color, marker=marker, label=SERVER_LABELS[server])
                for x, value in zip(xs, values):
                    axis.annotate(f"{value:.0f}", (x, value), xytext=(4, 3), textcoords="offset points", fontsize=7,
                                  color=color)  # fmt: skip
            top = max([top, *(r["req_per_s"] for r in runs)])
            bottom = min([bottom, *(r["req_per_s"] for r in runs if r["req_per_s"] > 0)])
        highest = _limits(rate, results["in_process"][model], top)
        rate.set(title=f"{MODEL_LABELS[model]}: req/s (higher is better)", xlabel="concurrent connections")
        tail.set(title=f"{MODEL_LABELS[model]}: p99 latency, ms (lower is better)", xlabel="concurrent connections")
        rate.set_yscale("log")
        tail.set_yscale("log")
        rate.set_ylim(bottom / 3, max(top * 2.5, highest * 1.6))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    delay = results["config"]["headline_delay_ms"]
    fig.suptitle(f"Serving on one core (wrk on the other, torch on one thread); torchferry --max-delay-ms {delay:g}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def update_doc(doc: Path, markdown: str) -> bool:
    return replace_block(doc, DOC_START, DOC_END, markdown)


# ----------------------------------------------------------------------------- main


def run(settings: Settings, work_root: Path) -> dict[str, Any]:
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("this benchmark pins the server and the load generator to two different cores")
    started, load_before, source = time.monotonic(), os.getloadavg(), source_info()
    os.sched_setaffinity(0, {LOAD_CORE})  # this process only waits and polls: keep it off the server's core
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serving-", dir=work_root))
    try:
        files = prepare(work)
        results: dict[str, Any] = {"in_process": in_process(files, settings.in_process_min_s)}
        results["runs"] = server_runs(files, settings)
        results["memory"] = memory(files)
        results["perf_analyzer"] = (
            perf_analyzer(files, CACHE_DIR / "perf_analyzer") if settings.perf_analyzer else {"ran": False}
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "config": {
            "date": time.strftime("%Y-%m-%d"),
            "duration_s": settings.duration_s,
            "warmup_s": settings.warmup_s,
            "concurrency": list(settings.concurrency),
            "sweep_concurrency": list(settings.sweep_concurrency),
            "delays_ms": list(settings.delays_ms),
            "headline_delay_ms": settings.headline_delay_ms,
            "max_batch_size": MAX_BATCH_SIZE,
            "server_core": SERVER_CORE,
            "load_core": LOAD_CORE,
            "wrk_timeout": WRK_TIMEOUT,
            "input_shapes": {k: list(v) for k, v in INPUT_SHAPES.items()},
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "elapsed_s": time.monotonic() - started,
        },
        "machine": machine_info(),
        "source": source,
        **results,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=DURATION_S, help=f"seconds per wrk run ({DURATION_S})")
    parser.add_argument("--max-delay-ms", type=float, default=HEADLINE_DELAY_MS, help="torchferry's, headline table")
    parser.add_argument("--no-perf-analyzer", action="store_true", help="skip the perf_analyzer step")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s runs; outputs under --work")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help=f"writes OUT/{JSON_NAME}, OUT/{PLOT_NAME}")
    parser.add_argument("--work", type=Path, default=WORK_DIR, help="scratch files go to a new dir in it")
    parser.add_argument("--from-json", type=Path, help="only re-render plot, table and doc from saved results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(
        duration_s=args.duration, headline_delay_ms=args.max_delay_ms, perf_analyzer=not args.no_perf_analyzer
    )
    out = args.out
    if args.quick:  # never overwrite published results with smoke-test numbers
        settings = Settings(
            duration_s=QUICK_DURATION_S,
            headline_delay_ms=args.max_delay_ms,
            in_process_min_s=0.3,
            perf_analyzer=not args.no_perf_analyzer,
        )
        out = args.work / "quick-serving"
    json_path = out / JSON_NAME
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run(settings, args.work)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown = render_markdown(results)
    print(markdown)
    write_plot(results, out / PLOT_NAME)
    synced = update_doc(out / DOC_NAME, markdown)
    written = [str(out / PLOT_NAME)] + ([] if args.from_json else [str(json_path)])
    written += [str(out / DOC_NAME)] if synced else []
    print(f"\nwrote {', '.join(written)}")


if __name__ == "__main__":
    main()
