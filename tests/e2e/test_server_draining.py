"""503 is the answer while the server drains, on every protocol, and only then.

A SIGTERM'd server closes its listening socket at once, so a second process cannot
reliably catch the draining window from outside (the SIGTERM test in
``test_server_lifecycle.py`` accepts a refused connection there). Here a real uvicorn
runs the app in this process, and the test flips the same flag the stop signal flips
(``_DrainingServer.handle_exit`` → ``manager.draining``), then asks over real HTTP.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

import torchferry as ferry
from tests.serving_helpers import request
from torchferry.serving.app import create_app, preload
from torchferry.serving.config import load_config
from torchferry.serving.server import _DrainingServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[int, _DrainingServer, object]]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    ferry.pack(model, tmp_path / "iris.ferry", example_inputs=(torch.randn(1, 4),), name="iris")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = load_config(sources=[str(tmp_path / "iris.ferry")], server={"port": port, "access_log": False})
    app = create_app(config)
    preload(app)
    manager = app.state.manager
    server = _DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"),
        lambda: setattr(manager, "draining", True),
    )
    thread = threading.Thread(target=server.run, daemon=True)  # not the main thread: no signal handlers
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield port, server, manager
    finally:
        server.should_exit = True
        thread.join(30)


def test_ready_until_draining_then_503_on_every_protocol(live: tuple[int, _DrainingServer, object]) -> None:
    port, server, _ = live
    row = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    oip = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
    calls = [
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/models/iris/ready", None),
        ("POST", "/predict/iris", row),
        ("POST", "/v2/models/iris/infer", oip),
        ("POST", "/v1/models/iris:predict", {"instances": row["inputs"]}),
    ]
    for method, path, body in calls:
        assert request(port, method, path, body).status == 200, path
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    request(port, "GET", "/v2/health/live", connection=connection)  # keep-alive: open before draining
    server._on_exit()  # what SIGTERM does first (handle_exit), without stopping uvicorn yet
    for method, path, body in calls:
        reply = request(port, method, path, body)
        assert reply.status == 503, (path, reply.status, reply.text)
        assert reply.json()["type"] == "NotReadyError" and "draining" in reply.json()["error"], reply.json()
    assert request(port, "GET", "/v2/health/live").status == 200  # alive while draining: do not restart it
    assert request(port, "GET", "/v2", connection=connection).status == 200
    connection.close()


def test_the_stop_signal_marks_draining_before_uvicorn_stops(live: tuple[int, _DrainingServer, object]) -> None:
    _, server, manager = live
    assert not manager.draining  # type: ignore[attr-defined]
    server.handle_exit(signal.SIGTERM, None)
    assert manager.draining and server.should_exit  # type: ignore[attr-defined]
