"""Loading, unloading and switching model versions on a running server (Triton's repository API).

``POST /v2/repository/models/{m}/load`` with ``{"parameters": {"source": "iris@production"}}``
loads a version next to the ones being served and makes it the default once it has fully
loaded; requests keep flowing to the old default until then, so a hot swap fails none.
With a token configured (``--api-token`` or ``TORCHFERRY_API_TOKEN``) these routes need
``Authorization: Bearer <token>``; inference routes never do.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from torchferry.errors import InputError, UnauthorizedError
from torchferry.serving.config import ModelSpec, merge_options
from torchferry.serving.manager import ModelManager
from torchferry.serving.responses import json_response

__all__ = ["management_router"]


def _parameters(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the request body is not valid JSON: {exc}.") from None
    parameters = payload.get("parameters", {}) if isinstance(payload, dict) else None
    if not isinstance(parameters, dict):
        raise InputError('expected {"parameters": {"source": ..., "version": ..., <model options>}}.')
    return parameters


def _add_index_route(router: APIRouter) -> None:
    @router.post("/index", summary="Loaded models and versions")
    async def index(request: Request) -> Response:
        manager: ModelManager = request.app.state.manager
        entries = [{"name": h.name, "version": h.version, "state": "READY", "reason": ""} for h in manager]
        return json_response(entries)


def management_router(api_token: str | None) -> APIRouter:
    """The repository routes; with ``api_token`` set, every one of them needs it."""

    def require_token(request: Request) -> None:
        if api_token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_token}".encode()):
            raise UnauthorizedError(
                "management requests need the header 'Authorization: Bearer <token>' with the server's API token."
            )

    router = APIRouter(prefix="/v2/repository", tags=["Model management"], dependencies=[Depends(require_token)])
    _add_index_route(router)

    @router.post("/models/{name}/load", summary="Load a version (hot swap) and make it the default")
    async def load(request: Request, name: str) -> Response:
        parameters = _parameters(await request.body())
        source = parameters.pop("source", name)
        if not isinstance(source, str):
            raise InputError("parameters.source must be a .ferry path or a registry reference (a string).")
        spec = ModelSpec(source, name, merge_options("parameters", parameters, request.app.state.config.defaults))
        hosted = await request.app.state.manager.load_async(spec)
        return json_response({"name": hosted.name, "version": hosted.version, "load_seconds": hosted.load_seconds})

    @router.post("/models/{name}/unload", summary="Unload a model (every version, or parameters.version)")
    async def unload(request: Request, name: str) -> Response:
        version = _parameters(await request.body()).get("version")
        gone = request.app.state.manager.unload(name, None if version is None else str(version))
        return json_response({"unloaded": [f"{h.name}:{h.version}" for h in gone]})

    @router.post("/models/{name}/versions/{version}/default", summary="Make a loaded version the default")
    async def set_default(request: Request, name: str, version: str) -> Response:
        request.app.state.manager.set_default(name, version)
        return json_response({"name": name, "default": version})

    return router
