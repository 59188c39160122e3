"""The ASGI application: every protocol on one port, models loaded before the first request.

``create_app(config)`` is what ``torchferry serve`` runs in each worker process. The
lifespan loads every configured model (a model that fails to load stops the start
with its error, rather than serving a partial set), and drains them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from torchferry._version import __version__
from torchferry.errors import FerryError
from torchferry.serving.config import ServerConfig
from torchferry.serving.fastpath import FastPath
from torchferry.serving.management import management_router
from torchferry.serving.manager import ModelManager
from torchferry.serving.metrics import CONTENT_TYPE, ServingMetrics
from torchferry.serving.middleware import RequestMiddleware
from torchferry.serving.oip import oip_router
from torchferry.serving.openapi import model_openapi
from torchferry.serving.responses import ferry_error_handler, http_error_handler, unexpected_error_handler
from torchferry.serving.simple import kserve_router, simple_router

log = logging.getLogger("torchferry.serving")

__all__ = ["CONFIG_ENV", "configure_logging", "create_app", "create_app_from_env", "preload"]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONFIG_ENV = "TORCHFERRY_SERVE_CONFIG"
"""How worker processes started by uvicorn receive the configuration (JSON)."""


def create_app(config: ServerConfig, *, api_token: str | None = None) -> FastAPI:
    metrics = ServingMetrics()
    manager = ModelManager(metrics, registry=config.registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not app.state.preloaded:
            for spec in config.models:
                try:
                    await manager.load_async(spec)
                except FerryError as exc:
                    log.error("cannot serve %s: %s", spec.source, exc)
                    raise
        log.info("serving %s", manager.describe())
        gc.collect()
        gc.freeze()  # the models' objects never die: keep full collections from walking them on every pass
        yield
        manager.draining = True
        await asyncio.to_thread(manager.close)

    app = FastAPI(
        title="torchferry",
        version=__version__,
        description="Models served by torchferry: Open Inference Protocol v2, KServe v1, simple JSON and uploads.",
        lifespan=lifespan,
    )
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.config = config
    app.state.preloaded = False
    app.add_exception_handler(FerryError, ferry_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    app.include_router(oip_router(statistics=config.workers == 1))
    app.include_router(kserve_router())
    app.include_router(simple_router())
    app.include_router(management_router(api_token or os.environ.get("TORCHFERRY_API_TOKEN")))
    _add_metrics_route(app, metrics)
    app.openapi = lambda: model_openapi(app, manager)  # type: ignore[method-assign]

    children: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def on_complete(state: dict[str, Any], status: int, seconds: float) -> None:
        labels = state.get("labels")
        if labels is None:
            return
        key = (*labels, str(status))
        pair = children.get(key)
        if pair is None:  # labels() is a locked dict lookup; do it once per (model, protocol, status)
            pair = children[key] = (metrics.requests.labels(*key), metrics.request_seconds.labels(*labels))
        pair[0].inc()
        pair[1].observe(seconds)

    app.add_middleware(FastPath, manager=manager, max_body_bytes=config.max_body_bytes)  # inside RequestMiddleware
    app.add_middleware(
        RequestMiddleware,
        max_body_bytes=config.max_body_bytes,
        access_log_enabled=config.access_log,
        on_complete=on_complete,
    )
    return app


def _add_metrics_route(app: FastAPI, metrics: ServingMetrics) -> None:
    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics")
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", tags=["Operations"], summary="Server summary", include_in_schema=False)
    async def root(request: Request) -> Response:
        manager: ModelManager = request.app.state.manager
        models = {name: manager.versions(name) for name in manager.names()}
        return Response(
            orjson.dumps({"name": "torchferry", "version": __version__, "models": models}),
            media_type="application/json",
        )


def preload(app: FastAPI) -> None:
    """Load the configured models now (blocking), so that errors surface before serving starts."""
    manager: ModelManager = app.state.manager
    for spec in app.state.config.models:
        manager.load(spec)
    app.state.preloaded = True


def configure_logging(level: str) -> None:
    """One stderr handler for torchferry and uvicorn, at ``level`` (access lines are INFO)."""
    logging.basicConfig(level=level.upper(), format=_LOG_FORMAT, stream=sys.stderr, force=True)


def create_app_from_env() -> FastAPI:
    """The app factory uvicorn calls in each worker process (``--workers N``)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise RuntimeError(f"{CONFIG_ENV} is not set; start workers with `torchferry serve`.")
    config = ServerConfig.from_dict(orjson.loads(raw))
    configure_logging(config.log_level)  # a spawned worker starts with no logging set up
    return create_app(config)
