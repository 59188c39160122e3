"""Running the app under uvicorn: one process, or N workers sharing the port; clean shutdown.

SIGTERM (or Ctrl+C) stops accepting connections, lets in-flight requests finish and the
batchers drain their queues, then returns normally, so ``torchferry serve`` exits 0, as
process managers expect. Readiness (``/v2/health/ready``) turns 503 as soon as the
signal arrives, so a load balancer stops sending new work while the old work drains.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import orjson
import uvicorn

from torchferry.errors import FerryError
from torchferry.serving.app import CONFIG_ENV, configure_logging, create_app, preload
from torchferry.serving.config import ServerConfig

log = logging.getLogger("torchferry.serving")

__all__ = ["run_server"]

_GRACE_S = 30
_WORKER_START_S = 60


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, marking the models as draining the moment a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


@contextlib.contextmanager
def _exit_quietly_on_signals() -> Iterator[None]:
    """uvicorn re-raises the stop signal after a graceful shutdown; with the default handler the
    process would then die by that signal. A handler that ignores the re-raise lets us exit 0."""
    if threading.current_thread() is not threading.main_thread():  # signals belong to the main thread
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    return {
        "host": config.host,
        "port": config.port,
        "log_config": None,
        "access_log": False,  # ours is structured and carries the request id
        "timeout_graceful_shutdown": _GRACE_S,
        "lifespan": "on",
        "server_header": False,
    }


def run_server(config: ServerConfig, *, api_token: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; blocks. Model load errors raise before the port opens."""
    configure_logging(config.log_level)
    if api_token:
        os.environ["TORCHFERRY_API_TOKEN"] = api_token
    if config.workers > 1:
        _run_workers(config)
        return
    app = create_app(config, api_token=api_token)
    preload(app)  # errors (a bad archive, an unknown reference) reach the caller, not a log line
    manager = app.state.manager

    def mark_draining() -> None:
        manager.draining = True

    server = _DrainingServer(uvicorn.Config(app, **_uvicorn_options(config)), mark_draining)
    with _exit_quietly_on_signals():
        server.run()
    if not server.started:
        raise FerryError(f"the server could not start on {config.host}:{config.port}; the log above says why.")


def _run_workers(config: ServerConfig) -> None:
    """N processes on one port (uvicorn's supervisor); each maps the archives' weights, so the
    page cache holds one copy. Metrics are summed across workers through a shared directory."""
    metrics_dir = tempfile.mkdtemp(prefix="torchferry-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    os.environ[CONFIG_ENV] = orjson.dumps(config.to_dict()).decode()
    try:
        with _exit_quietly_on_signals():
            uvicorn.run(
                "torchferry.serving.app:create_app_from_env",
                factory=True,
                workers=config.workers,
                timeout_worker_healthcheck=_WORKER_START_S,  # importing torch on a busy machine takes a while
                **_uvicorn_options(config),
            )
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
