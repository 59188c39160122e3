"""A server's life: start-up failures, per-model configuration, hot swap, unload, several workers,
and a SIGTERM that lets in-flight requests finish. Real ``torchferry serve`` subprocesses only."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.serving_helpers import (
    HOST,
    IRIS_LABELS,
    Archives,
    Reply,
    Server,
    assert_error,
    launch,
    oip_json_request,
    oip_output,
    probe_rows,
    request,
    run_concurrently,
    running_server,
    session_archives,
    start_server,
    stop_process,
)

psutil = pytest.importorskip("psutil")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "lifecycle-token"  # noqa: S105 - the test server's token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    return session_archives(tmp_path_factory)


# ------------------------------------------------------------------------------ start-up failures


@pytest.fixture(scope="module")
def failed_starts(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """``torchferry serve`` with bad input, all started at once (each imports torch): name → (exit, output)."""
    directory = tmp_path_factory.mktemp("failed-starts")
    junk = directory / "junk.ferry"
    junk.write_bytes(b"PK\x03\x04 not really a zip" * 20)
    unknown_key = directory / "serve.toml"
    unknown_key.write_text(f'[server]\nportt = 3\n\n[[models]]\nsource = "{archives.iris}"\n')
    cases = {
        "missing": [directory / "nowhere" / "x.ferry"],
        "junk after a good one": [archives.iris, junk],
        "untrusted": [archives.probe],
        "unknown config key": ["--config", unknown_key],
    }
    started = time.monotonic()
    processes = {
        name: launch([*args, "--port", "0"], directory / f"{i}.log") for i, (name, args) in enumerate(cases.items())
    }
    results = {}
    try:
        for i, (name, process) in enumerate(processes.items()):
            process.wait(120)
            results[name] = (process.returncode, (directory / f"{i}.log").read_text(encoding="utf-8", errors="replace"))
    finally:
        for process in processes.values():
            stop_process(process, 5)
    print(f"\n{len(cases)} failing starts (in parallel) took {time.monotonic() - started:.2f} s")
    return results


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "no such file"),
        ("junk after a good one", "not a readable zip"),
        ("untrusted", "--trust-code"),
        ("unknown config key", "unknown key(s) ['portt']"),
    ],
)
def test_bad_start_exits_1_with_one_error_line_before_listening(
    failed_starts: dict[str, tuple[int, str]], case: str, expected: str
) -> None:
    returncode, output = failed_starts[case]
    assert returncode == 1, f"exit {returncode}\n{output}"
    assert "Uvicorn running" not in output and "Started server process" not in output, output
    errors = [line for line in output.splitlines() if not line.startswith(tuple("0123456789"))]  # not log lines
    assert len(errors) == 1 and errors[0].startswith("error: "), f"not one error line:\n{output}"
    assert expected in errors[0], f"{expected!r} not in {errors[0]!r}"
    assert "Traceback" not in output


def test_config_error_names_its_table(failed_starts: dict[str, tuple[int, str]]) -> None:
    assert "serve.toml: [server]: unknown key(s) ['portt']" in failed_starts["unknown config key"][1]


# ------------------------------------------------------------------------------ SIGTERM drain


def test_sigterm_lets_in_flight_and_queued_requests_finish_then_exits_0(archives: Archives, tmp_path: Path) -> None:
    server = start_server([archives.probe, "--trust-code", "--torch-threads", "1"], tmp_path)
    try:
        running, queued = probe_rows(1, delay=1.0, seed=1), probe_rows(1, delay=0.3, seed=2)
        answers: dict[str, Reply] = {}
        threads = [
            threading.Thread(target=lambda: answers.update(running=_simple(server, running))),
            threading.Thread(target=lambda: answers.update(queued=_v2(server, queued))),
        ]
        threads[0].start()
        time.sleep(0.3)  # the first one is in the model now
        threads[1].start()
        time.sleep(0.2)  # the second one waits in the queue
        signalled = time.monotonic()
        server.process.terminate()  # SIGTERM
        time.sleep(0.2)
        try:  # new work is refused: the port is closed, or the answer is 503 while draining
            late = request(server.port, "POST", "/predict/probe", {"inputs": probe_rows(1).tolist()}, timeout=10)
            assert late.status == 503, late.text
        except (ConnectionError, http.client.HTTPException):
            pass
        for thread in threads:
            thread.join(30)
        answered = time.monotonic()
        assert answers["running"].status == 200, answers["running"].text
        assert answers["queued"].status == 200, answers["queued"].text
        np.testing.assert_allclose(
            np.asarray(answers["running"].json()["outputs"]["output"]), archives.probe_eager(running).numpy(), **TOL
        )
        np.testing.assert_allclose(oip_output(answers["queued"]), archives.probe_eager(queued).numpy(), **TOL)
        assert server.process.wait(15) == 0
        exited = time.monotonic()
        assert exited - answered < 5, f"exited {exited - answered:.2f} s after the last answer"
        print(
            f"\nSIGTERM at +0 s: last in-flight answer at +{answered - signalled:.2f} s, "
            f"exit 0 at +{exited - signalled:.2f} s"
        )
        assert "Shutting down" in server.log() and "Finished server process" in server.log()
    finally:
        server.stop()


def _simple(server: Server, rows: torch.Tensor) -> Reply:
    return server.post("/predict/probe", {"inputs": rows.tolist()})


def _v2(server: Server, rows: torch.Tensor, path: str = "/v2/models/probe/infer") -> Reply:
    return server.post(path, oip_json_request("x", rows))


# ------------------------------------------------------------------------------ serve.toml, hot swap, unload


@pytest.fixture(scope="module")
def configured(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``--config serve.toml``: per-model options, a relative archive path, and a flag that overrides the file."""
    directory = tmp_path_factory.mktemp("configured")
    shutil.copy(archives.iris, directory / "iris-copy.ferry")
    (directory / "serve.toml").write_text(
        f"""
[server]
max_body_mb = 2

[defaults]
max_batch_size = 8
max_delay_ms = 3
queue_size = 64
trust_code = true
torch_threads = 1

[[models]]
source = "{archives.probe}"
name = "probe"
max_batch_size = 4

[[models]]
source = "iris-copy.ferry"    # relative to this file, not to the server's working directory
name = "flower"
max_batch_size = 7
max_delay_ms = 1.5
""",
        encoding="utf-8",
    )
    args = ["--config", directory / "serve.toml", "--queue-size", "50", "--api-token", TOKEN]
    with running_server(args, directory) as server:
        yield server


def test_config_file_sets_per_model_options(configured: Server, archives: Archives) -> None:
    flower = configured.get("/v2/models/flower/config").json()
    assert flower["name"] == "flower" and flower["max_batch_size"] == 7
    assert flower["dynamic_batching"] == {
        "max_queue_delay_microseconds": 1500,
        "default_queue_policy": {"max_queue_size": 50},  # the flag overrides [defaults]
    }
    probe = configured.get("/v2/models/probe/config").json()
    assert probe["max_batch_size"] == 4
    assert probe["dynamic_batching"]["max_queue_delay_microseconds"] == 3000
    assert probe["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 50
    assert set(configured.get("/v1/models").json()["models"]) == {"flower", "probe"}
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    reply = configured.post("/predict/flower", {"inputs": x.tolist()})
    assert reply.status == 200, reply.text
    with torch.no_grad():
        expected = archives.iris_model(x)
    np.testing.assert_allclose(np.asarray(reply.json()["outputs"]["output"]), expected.numpy(), **TOL)
    assert reply.json()["labels"]["output"] == [IRIS_LABELS[i] for i in expected.argmax(-1).tolist()]


def _stream(server: Server, stop: threading.Event, log: list[tuple[float, Reply, torch.Tensor]], seed: int) -> None:
    """Requests one after another (alternating protocols) until ``stop``; each logged with its start time."""
    i = 0
    while not stop.is_set():
        rows = probe_rows(1, seed=seed * 1000 + i)
        started = time.monotonic()
        reply = _simple(server, rows) if i % 2 else _v2(server, rows)
        log.append((started, reply, rows))
        i += 1


def _version_and_output(reply: Reply) -> tuple[str, np.ndarray[Any, Any]]:
    doc = reply.json()
    if "model_name" in doc:  # OIP
        return doc["model_version"], oip_output(reply)
    return doc["version"], np.asarray(doc["outputs"]["output"])


def test_hot_swap_default_switch_and_unload(configured: Server, archives: Archives) -> None:
    stop = threading.Event()
    logs: list[list[tuple[float, Reply, torch.Tensor]]] = [[], []]
    streams = [threading.Thread(target=_stream, args=(configured, stop, logs[i], i + 1)) for i in range(2)]
    for thread in streams:
        thread.start()
    try:
        time.sleep(0.4)
        refused = configured.post(
            "/v2/repository/models/probe/load", {"parameters": {"source": str(archives.probe_v2)}}
        )
        assert_error(refused, 401, "UnauthorizedError")
        loaded = configured.post(
            "/v2/repository/models/probe/load", {"parameters": {"source": str(archives.probe_v2)}}, headers=AUTH
        )
        swapped = time.monotonic()
        assert loaded.status == 200, loaded.text
        assert loaded.json()["name"] == "probe" and loaded.json()["version"] == "2"
        time.sleep(0.4)
    finally:
        stop.set()
        for thread in streams:
            thread.join(30)
    sent = [entry for log in logs for entry in log]
    failed = [(r.status, r.text[:200]) for _, r, _ in sent if r.status != 200]
    assert not failed, failed[:5]
    versions_seen = {"1": 0, "2": 0}
    for started, reply, rows in sent:
        version, output = _version_and_output(reply)
        versions_seen[version] += 1
        np.testing.assert_allclose(output, archives.probe_eager(rows, version=int(version)).numpy(), **TOL)
        if started > swapped:
            assert version == "2", "a request sent after the load answered was served by the old version"
    assert versions_seen["1"] > 0 and versions_seen["2"] > 0, versions_seen
    print(f"\nhot swap under load: {len(sent)} requests, none failed; by version: {versions_seen}")

    metadata = configured.get("/v2/models/probe").json()
    assert metadata["versions"] == ["1", "2"]
    pinned = _v2(configured, probe_rows(1, seed=5), "/v2/models/probe/versions/1/infer")
    assert pinned.json()["model_version"] == "1"

    # the default goes back to 1, then version 1 is unloaded: the default falls back to 2
    switched = configured.post("/v2/repository/models/probe/versions/1/default", headers=AUTH)
    assert switched.status == 200, switched.text
    assert _simple(configured, probe_rows(1)).json()["version"] == "1"
    assert_error(
        configured.post("/v2/repository/models/probe/versions/7/default", headers=AUTH), 404, "NotFoundError", "'7'"
    )
    gone = configured.post("/v2/repository/models/probe/unload", {"parameters": {"version": "1"}}, headers=AUTH)
    assert gone.status == 200 and gone.json() == {"unloaded": ["probe:1"]}, gone.text
    assert_error(configured.get("/v2/models/probe/versions/1"), 404, "NotFoundError", "['2']")
    assert _simple(configured, probe_rows(1)).json()["version"] == "2"

    # unload the model: every protocol answers 404 and says what is still loaded
    gone = configured.post("/v2/repository/models/probe/unload", headers=AUTH)
    assert gone.status == 200 and gone.json() == {"unloaded": ["probe:2"]}, gone.text
    for reply in (
        _simple(configured, probe_rows(1)),
        _v2(configured, probe_rows(1)),
        configured.post("/v1/models/probe:predict", {"instances": probe_rows(1).tolist()}),
        configured.get("/v2/models/probe"),
        configured.get("/v2/models/probe/ready"),
        configured.get("/v1/models/probe"),
    ):
        assert_error(reply, 404, "NotFoundError", "'probe'", "flower (versions 1)")
    index = configured.post("/v2/repository/index", headers=AUTH).json()
    assert [(e["name"], e["version"]) for e in index] == [("flower", "1")]
    assert "/predict/probe" not in configured.get("/openapi.json").json()["paths"]
    metrics = configured.metrics()
    assert metrics.total("torchferry_model_loaded", model="probe") == 0
    assert metrics.total("torchferry_model_loaded", model="flower") == 1
    assert_error(configured.post("/v2/repository/models/probe/unload", headers=AUTH), 404, "NotFoundError")


def test_management_load_errors_leave_the_server_serving(configured: Server, tmp_path: Path) -> None:
    missing = configured.post(
        "/v2/repository/models/extra/load", {"parameters": {"source": str(tmp_path / "nope.ferry")}}, headers=AUTH
    )
    assert 400 <= missing.status < 500, missing.text
    assert "nope.ferry" in missing.json()["error"]
    bad_option = configured.post(
        "/v2/repository/models/extra/load",
        {"parameters": {"source": str(tmp_path / "nope.ferry"), "max_batch_size": 0}},
        headers=AUTH,
    )
    assert_error(bad_option, 400, "UsageError", "max_batch_size")
    unknown_option = configured.post(
        "/v2/repository/models/extra/load", {"parameters": {"source": "x.ferry", "batch": 3}}, headers=AUTH
    )
    assert_error(unknown_option, 400, "UsageError", "batch")
    not_json = configured.post("/v2/repository/models/extra/load", b"{nope", headers=AUTH)
    assert_error(not_json, 400, "InputError", "not valid JSON")
    assert "extra" not in configured.get("/v1/models").json()["models"]
    assert configured.post("/predict/flower", {"inputs": [[1, 2, 3, 4]]}).status == 200


def test_management_load_under_a_new_name_with_options(configured: Server, archives: Archives) -> None:
    loaded = configured.post(
        "/v2/repository/models/second/load",
        {"parameters": {"source": str(archives.probe_v2), "max_batch_size": 3}},
        headers=AUTH,
    )
    assert loaded.status == 200, loaded.text
    assert loaded.json()["name"] == "second" and loaded.json()["load_seconds"] > 0
    assert configured.get("/v2/models/second/config").json()["max_batch_size"] == 3
    rows = probe_rows(2, seed=9)
    reply = _v2(configured, rows, "/v2/models/second/infer")
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(oip_output(reply), archives.probe_eager(rows, version=2).numpy(), **TOL)
    assert "/predict/second" in configured.get("/openapi.json").json()["paths"]


def _slow_body_request(server: Server, path: str, payload: Any) -> tuple[socket.socket, bytes]:
    """Send a request's headers and the first bytes of its body; the rest is sent by ``_finish``."""
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock = socket.create_connection((HOST, server.port), timeout=30)
    sock.sendall(head + body[:5])
    return sock, body[5:]


def _finish(sock: socket.socket, rest: bytes) -> Reply:
    with sock:
        sock.sendall(rest)
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def test_reloading_the_same_version_fails_no_request(configured: Server, archives: Archives) -> None:
    x = [[5.1, 3.5, 1.4, 0.2]]
    pending = [
        _slow_body_request(configured, "/predict/flower", {"inputs": x}),
        _slow_body_request(configured, "/v1/models/flower:predict", {"instances": x}),
        _slow_body_request(configured, "/v2/models/flower/infer", oip_json_request("input", torch.tensor(x))),
    ]
    time.sleep(0.3)  # the server has routed each of them to flower:1 and waits for the rest of the body
    reloaded = configured.post(
        "/v2/repository/models/flower/load", {"parameters": {"source": str(archives.iris)}}, headers=AUTH
    )
    assert reloaded.status == 200 and reloaded.json()["version"] == "1", reloaded.text
    replies = [_finish(sock, rest) for sock, rest in pending]
    assert [r.status for r in replies] == [200, 200, 200], [r.text for r in replies]


def test_reload_keeps_the_model_loaded_gauge(configured: Server, archives: Archives) -> None:
    reloaded = configured.post(
        "/v2/repository/models/flower/load", {"parameters": {"source": str(archives.iris)}}, headers=AUTH
    )
    assert reloaded.status == 200, reloaded.text
    time.sleep(0.5)  # the old instance has drained and closed
    assert configured.post("/predict/flower", {"inputs": [[1, 2, 3, 4]]}).status == 200
    assert configured.metrics().total("torchferry_model_loaded", model="flower", version="1") == 1


# ------------------------------------------------------------------------------ several workers


def _worker_pids(server: Server, count: int, timeout_s: float = 120) -> list[int]:
    """The PIDs of uvicorn's worker processes (multiprocessing children running ``spawn_main``)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert server.process.poll() is None, server.log()
        workers = []
        for child in psutil.Process(server.pid).children():
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    workers.append(child.pid)
        if len(workers) == count:
            return workers
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not start:\n{server.log()[-3000:]}")


def _owners(workers: list[int], local_ports: set[int]) -> dict[int, int]:
    """Which worker holds the server end of each of our connections (by our local port)."""
    owners = {}
    for pid in workers:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.raddr and conn.raddr.port in local_ports:
                owners[conn.raddr.port] = pid
    return owners


@pytest.fixture(scope="module")
def two_workers(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [archives.iris, "--workers", "2", "--torch-threads", "1"]
    with running_server(args, tmp_path_factory.mktemp("workers")) as server:
        yield server


def test_workers_write_their_log_lines(two_workers: Server) -> None:
    for _ in range(4):
        assert (
            two_workers.post("/predict/iris", {"inputs": [[1, 2, 3, 4]]}, headers={"X-Request-ID": "wlog"}).status
            == 200
        )
    deadline = time.monotonic() + 60  # the second worker may still be importing torch on a busy machine
    while two_workers.log().count("loaded iris:1") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    log = two_workers.log()
    assert log.count("Started server process") >= 2 and log.count("loaded iris:1") >= 2
    assert '"request_id":"wlog"' in log


def test_two_workers_share_the_port_and_sum_their_metrics(two_workers: Server, archives: Archives) -> None:
    """Both workers answer, /metrics on either counts the requests of both, SIGTERM stops all of them.
    Last test of the module: it stops the shared server."""
    server = two_workers
    workers = _worker_pids(server, 2)
    assert server.pid not in workers
    assert "statistics" not in server.get("/v2").json()["extensions"]  # per-worker counts would mislead
    before = server.metrics()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = archives.iris_model(x).numpy()
    sent = 0
    served_by: dict[int, int] = {}
    end = time.monotonic() + 60
    while len(served_by) < 2 and time.monotonic() < end:
        sent += 16
        workers, owners = _round_of_keep_alive_requests(server, x, expected)
        for pid in owners.values():
            served_by[pid] = served_by.get(pid, 0) + 1
    assert len(served_by) == 2, f"one worker answered everything: {served_by}"
    assert server.post("/v2/models/iris/infer", oip_json_request("input", x[:2])).status == 200
    assert server.post("/v1/models/iris:predict", {"instances": x[:2].tolist()}).status == 200

    after = server.metrics()  # whichever worker answers, it reports both

    def delta(name: str, **labels: str) -> float:
        return after.total(name, model="iris", version="1", **labels) - before.total(
            name, model="iris", version="1", **labels
        )

    assert delta("torchferry_requests_total") == sent + 2, f"/metrics counts {delta('torchferry_requests_total')}"
    assert delta("torchferry_requests_total", protocol="simple", status="200") == sent
    assert delta("torchferry_requests_total", protocol="v2", status="200") == 1
    assert delta("torchferry_batch_size_sum") == sent + 4  # rows
    assert after.total("torchferry_model_loaded", model="iris", version="1") == 1

    print(f"\n--workers 2: connections answered by each worker {served_by}; memory:")
    for pid in [server.pid, *workers]:
        memory = psutil.Process(pid).memory_full_info()
        role = "supervisor" if pid == server.pid else "worker"
        print(
            f"  {role:10} pid {pid}: rss {memory.rss / 2**20:7.1f} MiB, uss {memory.uss / 2**20:7.1f} MiB, "
            f"pss {getattr(memory, 'pss', 0) / 2**20:7.1f} MiB"
        )
    restarted = server.log().count("died")
    if restarted:
        print(f"  note: uvicorn replaced {restarted} worker(s) that missed its 5 s health check while starting")

    assert server.stop() == 0
    end = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived the supervisor"


def _round_of_keep_alive_requests(
    server: Server, x: torch.Tensor, expected: np.ndarray[Any, Any]
) -> tuple[list[int], dict[int, int]]:
    """16 concurrent requests on 16 kept-open connections → (worker PIDs, worker holding each connection)."""
    connections = [http.client.HTTPConnection(HOST, server.port, timeout=30) for _ in range(len(x))]
    try:
        calls = [
            lambda i=i, c=c: request(
                server.port, "POST", "/predict/iris", {"inputs": x[i : i + 1].tolist()}, connection=c
            )
            for i, c in enumerate(connections)
        ]
        for i, reply in enumerate(run_concurrently(calls)):
            assert isinstance(reply, Reply) and reply.status == 200, reply
            np.testing.assert_allclose(np.asarray(reply.json()["outputs"]["output"]), expected[i : i + 1], **TOL)
        workers = _worker_pids(server, 2)
        return workers, _owners(workers, {c.sock.getsockname()[1] for c in connections if c.sock is not None})
    finally:
        for conn in connections:
            conn.close()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
