"""``torchferry serve``: archives and registry references behind one HTTP port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from torchferry.cli.commands.registry import HOME_VARIABLE

EPILOG = """Examples:

  torchferry serve iris.ferry                                 # http://127.0.0.1:8080

  torchferry serve iris@production lenet.ferry --port 9000    # several models, one port

  torchferry serve --config serve.toml --workers 2            # per-model options in TOML

  curl -s localhost:8080/predict/iris -d '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}'

Endpoints: /v2/... (Open Inference Protocol: tritonclient, perf_analyzer), /v1/models/M:predict
(KServe v1), /predict/M (simple JSON or an image upload), /metrics, /docs. SIGTERM drains and exits 0.
"""


def _flag(help_text: str) -> Any:
    return typer.Option(help=help_text, show_default=False)


def serve_command(
    models: Annotated[
        list[str] | None,
        typer.Argument(help=".ferry files or registry references (iris, iris:3, iris@production).", show_default=False),
    ] = None,
    host: Annotated[
        str | None, _flag("Address to listen on [default: 127.0.0.1; 0.0.0.0 for every interface].")
    ] = None,
    port: Annotated[int | None, _flag("Port [default: 8080; 0 picks a free one].")] = None,
    workers: Annotated[
        int | None, _flag("Processes sharing the port; they share the mapped weights [default: 1].")
    ] = None,
    max_batch_size: Annotated[int | None, _flag("Most rows one forward pass runs [default: 32].")] = None,
    max_delay_ms: Annotated[
        float | None, _flag("Longest wait for a fuller batch while the model is busy [default: 0: run what is queued].")
    ] = None,
    queue_size: Annotated[int | None, _flag("Requests a model may queue before answering 429 [default: 256].")] = None,
    timeout_ms: Annotated[
        float | None, _flag("Deadline per request; past it the answer is 504 [default: 30000].")
    ] = None,
    torch_threads: Annotated[int | None, _flag("torch threads per model [default: torch's own].")] = None,
    max_body_mb: Annotated[float | None, _flag("Largest request body; larger ones get 413 [default: 64].")] = None,
    trust_code: Annotated[
        bool | None,
        typer.Option(
            "--trust-code", help="Serve archives that carry Python code (only ones you trust).", show_default=False
        ),
    ] = None,
    device: Annotated[str | None, _flag("Device to run on, e.g. cuda:0 [default: cpu].")] = None,
    config: Annotated[
        Path | None, _flag("A serve.toml with [server], [defaults] and [[models]] (see docs/serving.md).")
    ] = None,
    registry: Annotated[
        Path | None, _flag(f"The registry references resolve in [default: ${HOME_VARIABLE}, else the user data dir].")
    ] = None,
    api_token: Annotated[
        str | None,
        typer.Option(
            envvar="TORCHFERRY_API_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' on the management API (/v2/repository).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[str | None, _flag("debug, info, warning or error [default: info].")] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="One JSON line per request on the torchferry.access logger [default: on].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve models over HTTP: Open Inference Protocol v2 (JSON and binary tensors), KServe v1,
    simple JSON and file upload, with dynamic batching, Prometheus metrics at /metrics and
    OpenAPI docs at /docs. Flags override the --config file; the file overrides the defaults.
    """
    from torchferry.serving.api import serve

    serve(
        models or [],
        host=host,
        port=port,
        workers=workers,
        config=config,
        registry=registry,
        max_body_mb=max_body_mb,
        api_token=api_token,
        log_level=log_level,
        access_log=access_log,
        max_batch_size=max_batch_size,
        max_delay_ms=max_delay_ms,
        queue_size=queue_size,
        timeout_ms=timeout_ms,
        torch_threads=torch_threads,
        trust_code=trust_code,
        device=device,
    )
