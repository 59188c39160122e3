"""``torchferry.serve``: the Python twin of ``torchferry serve``.

Importing ``torchferry`` must not import FastAPI or uvicorn (an optional extra, and
a second of imports), so the server modules load only when ``serve`` is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torchferry.errors import UsageError

__all__ = ["serve"]


def serve(
    models: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] = (),
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    config: str | os.PathLike[str] | None = None,
    registry: str | os.PathLike[str] | None = None,
    max_body_mb: float | None = None,
    log_level: str | None = None,
    access_log: bool | None = None,
    api_token: str | None = None,
    **options: Any,
) -> None:
    """Serve ``models`` (``.ferry`` paths or registry references) over HTTP until SIGTERM/Ctrl+C.

    Blocks, like ``torchferry serve``, and takes the same settings: ``options`` are the
    per-model ones (``max_batch_size``, ``max_delay_ms``, ``queue_size``, ``timeout_ms``,
    ``torch_threads``, ``trust_code``, ``device``); ``config`` is a ``serve.toml`` whose
    values these arguments override. Defaults: 127.0.0.1:8080, one worker.
    """
    try:
        from torchferry.serving.config import load_config
        from torchferry.serving.server import run_server
    except ImportError as exc:
        raise UsageError(
            f"serving needs the serve extra ({exc.name} is missing): pip install 'torchferry[serve]'."
        ) from None
    sources = [os.fspath(models)] if isinstance(models, (str, os.PathLike)) else [os.fspath(m) for m in models]
    server = {
        "host": host,
        "port": port,
        "workers": workers,
        "max_body_mb": max_body_mb,
        "registry": None if registry is None else os.fspath(registry),
        "log_level": log_level,
        "access_log": access_log,
    }
    settings = load_config(config, sources=sources, server=server, options=options)
    if not settings.models:
        raise UsageError("no model to serve: pass .ferry paths or registry references, or a config with [[models]].")
    run_server(settings, api_token=api_token)
