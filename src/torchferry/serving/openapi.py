"""The OpenAPI document at ``/openapi.json`` (and ``/docs``), with each loaded model's real schema.

The generic routes take any model name, so FastAPI alone would document ``{name}`` and
an opaque body. Here every loaded model also gets its own concrete ``/predict/<model>``
and ``/v2/models/<model>/infer`` entries: input names, dtypes, shapes and a request
example that works when sent as is, built from the archive's signature. The document is
rebuilt on each request, so it follows hot swaps.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from torchferry.archive.manifest import TensorSpec
from torchferry.serving import codec
from torchferry.serving.hosted import HostedModel
from torchferry.serving.manager import ModelManager

__all__ = ["model_openapi"]

_JSON_TYPES = {"bool": "boolean", "float": "number", "complex": "number"}


def _json_type(dtype: str) -> str:
    for prefix, kind in _JSON_TYPES.items():
        if dtype.startswith(prefix) or dtype.startswith("b" + prefix):
            return kind
    return "integer"


def _array_schema(spec: TensorSpec) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": _json_type(spec.dtype)}
    for dim in reversed(spec.shape):
        schema = {"type": "array", "items": schema} | ({"minItems": dim, "maxItems": dim} if dim >= 0 else {})
    schema["description"] = f"{spec.describe()} (? = any size; the first ? is the batch)"
    return schema


def _example(spec: TensorSpec) -> Any:
    value: Any = False if spec.dtype == "bool" else (0.0 if _json_type(spec.dtype) == "number" else 0)
    for dim in reversed(spec.shape):
        value = [value] * (dim if dim >= 0 else 1)
    return value


def _predict_operation(hosted: HostedModel) -> dict[str, Any]:
    inputs = hosted.signature.inputs
    properties = {spec.name: _array_schema(spec) for spec in inputs}
    example = {spec.name: _example(spec) for spec in inputs}
    image = [step["input"] for step in hosted.manifest.preprocess if step.get("op") == "image"]
    content: dict[str, Any] = {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["inputs"],
                "properties": {"inputs": {"type": "object", "properties": properties, "required": list(properties)}},
            },
            "example": {"inputs": example},
        }
    }
    if image:
        file_field = {"type": "string", "format": "binary"}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": {image[0]: file_field}}}
        content["image/*"] = {"schema": file_field}
    labels = hosted.packaged.labels
    return {
        "tags": [f"model {hosted.name}"],
        "summary": f"Predict with {hosted.name} (version {hosted.version})",
        "description": (hosted.manifest.description or "") + ("\n\nLabels: " + ", ".join(labels) if labels else ""),
        "operationId": f"predict_{hosted.name}_{hosted.version}",
        "requestBody": {"required": True, "content": content},
        "responses": {"200": {"description": "outputs by name (and label names when the archive has labels)"}},
    }


def _infer_operation(hosted: HostedModel) -> dict[str, Any]:
    inputs = [
        {
            "name": spec.name,
            "datatype": codec.oip_datatype(spec.dtype) or spec.dtype.upper(),
            "shape": [d if d >= 0 else 1 for d in spec.shape],
            "data": _example(spec),
        }
        for spec in hosted.signature.inputs
    ]
    return {
        "tags": [f"model {hosted.name}"],
        "summary": f"Open Inference Protocol v2 inference on {hosted.name}",
        "operationId": f"infer_{hosted.name}_{hosted.version}",
        "requestBody": {"required": True, "content": {"application/json": {"example": {"inputs": inputs}}}},
        "responses": {"200": {"description": "OIP inference response"}},
    }


def model_openapi(app: FastAPI, manager: ModelManager) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    paths = schema.setdefault("paths", {})
    for name in manager.names():
        hosted = manager.get(name)
        paths[f"/predict/{name}"] = {"post": _predict_operation(hosted)}
        paths[f"/v2/models/{name}/infer"] = {"post": _infer_operation(hosted)}
    return schema
