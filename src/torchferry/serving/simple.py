"""The protocols people write by hand: simple JSON ``/predict/{m}``, file upload, KServe v1.

``/predict/{m}`` is the seed-002 Flask endpoint without the Flask app: post
``{"inputs": ...}`` (or the bare value) and get outputs back, with label names when the
archive has labels. The same path takes an image, as multipart/form-data or as the raw
body, for archives with image pre-processing. KServe v1 (``:predict`` with
``instances``) is the TensorFlow-Serving shape that KServe clients send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry.errors import InputError
from torchferry.serving.batcher import BatchResult
from torchferry.serving.hosted import HostedModel
from torchferry.serving.manager import ModelManager
from torchferry.serving.responses import (
    deadline_for,
    json_response,
    mark,
    read_body,
    timing_headers,
    to_jsonable,
)

__all__ = ["kserve_router", "simple_router"]

_IMAGE_TYPES = ("image/", "application/octet-stream")


def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def _loads(body: bytes) -> Any:
    if not body:
        raise InputError('the request body is empty; send JSON such as {"inputs": [[...]]}.')
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the request body is not valid JSON: {exc}.") from None


async def predict(
    hosted: HostedModel, inputs: Any, state: dict[str, Any], *, decode_in_thread: bool
) -> tuple[dict[str, Any], BatchResult]:
    """Check and convert ``inputs`` like ``Packaged.predict``, run them through the batcher, finish."""
    packaged = hosted.packaged
    if decode_in_thread:  # image decoding takes milliseconds: keep it off the event loop
        tensors, single = await asyncio.to_thread(packaged.prepare, inputs)
    else:
        tensors, single = packaged.prepare(inputs)
    result = await hosted.infer(tensors, deadline=deadline_for(hosted))
    state["batch"] = result.batch_size
    return packaged.finish(result.outputs, single), result


def body_inputs(content_type: str, body: bytes) -> tuple[Any, bool]:
    """``/predict`` inputs from a non-multipart body, and whether it is an upload (an image)."""
    if content_type.startswith(_IMAGE_TYPES):
        return body, True
    payload = _loads(body)
    if isinstance(payload, dict) and "inputs" in payload:
        return payload["inputs"], False
    return payload, False


async def predict_call(
    hosted: HostedModel, inputs: Any, is_upload: bool, state: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """One ``/predict`` answer, independent of the web framework: (JSON body, headers)."""
    outputs, result = await predict(hosted, inputs, state, decode_in_thread=is_upload)
    content: dict[str, Any] = {"model": hosted.name, "version": hosted.version, "outputs": to_jsonable(outputs)}
    labels = _argmax_labels(hosted, outputs)
    if labels:
        content["labels"] = labels
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), timing_headers(result)


def content_type_of(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "application/json").split(";")[0].strip().lower()


def _argmax_labels(hosted: HostedModel, outputs: Mapping[str, Any]) -> dict[str, Any]:
    """Label names of the top score per row, for outputs that score each label (no Classify step)."""
    labels = hosted.packaged.labels
    if not labels:
        return {}
    found = {}
    for name, value in outputs.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[-1] == len(labels):
            top = value.argmax(axis=-1)
            found[name] = labels[int(top)] if top.ndim == 0 else [labels[int(i)] for i in top.reshape(-1)]
    return found


async def _form_inputs(request: Request, hosted: HostedModel) -> Any:
    names = [s.name for s in hosted.signature.inputs]
    async with request.form() as form:
        files = {key: await value.read() for key, value in form.multi_items() if hasattr(value, "read")}
    if not files:
        raise InputError(f"the form has no file field; upload the image as a file field named {names[0]!r}.")
    if len(names) == 1 and len(files) == 1:
        return next(iter(files.values()))
    return {key: value for key, value in files.items()}


async def _body_inputs(request: Request, hosted: HostedModel) -> tuple[Any, bool]:
    content_type = content_type_of(request.headers)
    if content_type == "multipart/form-data":
        return await _form_inputs(request, hosted), True
    return body_inputs(content_type, await read_body(request))


def simple_router() -> APIRouter:
    router = APIRouter(tags=["Simple JSON and file upload"])

    @router.post("/predict/{name}", summary="Predict (JSON, multipart image upload, or a raw image body)")
    @router.post("/predict/{name}/versions/{version}", summary="Predict with one version")
    async def predict_route(request: Request, name: str, version: str | None = None) -> Response:
        hosted = _manager(request).for_inference(name, version)
        mark(request, hosted, "simple")
        inputs, is_upload = await _body_inputs(request, hosted)
        content, headers = await predict_call(hosted, inputs, is_upload, request.scope["state"])
        return Response(content, 200, headers, media_type="application/json")

    return router


def _instances(payload: Any, hosted: HostedModel) -> Any:
    if not isinstance(payload, dict) or not ({"instances", "inputs"} & payload.keys()):
        raise InputError('KServe v1 expects {"instances": [...]} or {"inputs": [...]}.')
    key = "instances" if "instances" in payload else "inputs"
    rows = payload[key]
    names = [s.name for s in hosted.signature.inputs]
    if isinstance(rows, dict) and key == "inputs":  # columnar: {"inputs": {name: batch}}
        return rows
    if not isinstance(rows, list) or not rows:
        raise InputError(f'expected "{key}" to be a non-empty list of instances.')
    if all(isinstance(row, dict) for row in rows):
        missing = [n for n in names if any(n not in row for row in rows)]
        if missing:
            raise InputError(f"every instance needs the inputs {names}; missing {missing}.")
        return {n: [row[n] for row in rows] for n in names}
    if len(names) != 1:
        raise InputError(f"model {hosted.name} takes inputs {names}: give each instance as an object by input name.")
    return rows


def _predictions(outputs: dict[str, Any]) -> list[Any]:
    values = list(outputs.values())
    if len(values) == 1:
        return list(to_jsonable(values[0]) if isinstance(values[0], np.ndarray) else values[0])
    rows = len(values[0])
    return [{name: to_jsonable(value[i]) for name, value in outputs.items()} for i in range(rows)]


def kserve_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["KServe v1"])

    @router.get("/models", summary="List models")
    async def list_models(request: Request) -> Response:
        return json_response({"models": _manager(request).names()})

    @router.get("/models/{name}", summary="Model ready")
    async def ready(request: Request, name: str) -> Response:
        hosted = _manager(request).get(name)
        return json_response({"name": hosted.name, "ready": not _manager(request).draining})

    @router.post("/models/{name}:predict", summary="Predict (instances)")
    async def predict_v1(request: Request, name: str) -> Response:
        hosted = _manager(request).for_inference(name)
        mark(request, hosted, "v1")
        inputs = _instances(_loads(await read_body(request)), hosted)
        outputs, result = await predict(hosted, inputs, request.scope["state"], decode_in_thread=False)
        return json_response({"predictions": _predictions(outputs)}, headers=timing_headers(result))

    return router
