"""Open Inference Protocol v2 (KServe V2 / Triton HTTP), with the extensions Triton's tools need.

Besides the core (health, server and model metadata, infer with JSON and binary tensors),
this serves ``/v2/models/{m}/config`` (perf_analyzer refuses to start without it) and
``/v2/models/{m}/stats`` (advertised only with one worker: each worker keeps its own
counts, and perf_analyzer differences them between windows, so with several workers
they would not be faithful). Details and traps: ``docs/serving.md``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from torchferry._version import __version__
from torchferry.archive.manifest import TensorSpec
from torchferry.errors import InputError, NotReadyError
from torchferry.serving import codec
from torchferry.serving.hosted import HostedModel
from torchferry.serving.manager import ModelManager
from torchferry.serving.responses import (
    deadline_for,
    json_response,
    mark,
    read_body,
    timing_headers,
    timing_parameters,
)

__all__ = ["oip_router"]

PLATFORM = "torchferry"


def _datatype(spec: TensorSpec) -> str:
    return codec.oip_datatype(spec.dtype) or spec.dtype.upper()


def _metadata_tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": _datatype(spec), "shape": list(spec.shape)}


def model_metadata(manager: ModelManager, hosted: HostedModel) -> dict[str, Any]:
    return {
        "name": hosted.name,
        "versions": manager.versions(hosted.name),
        "platform": PLATFORM,
        "inputs": [_metadata_tensor(s) for s in hosted.signature.inputs],
        "outputs": [_metadata_tensor(s) for s in hosted.signature.outputs],
    }


def _config_tensor(spec: TensorSpec, batched: bool) -> dict[str, Any]:
    oip = codec.oip_datatype(spec.dtype)
    dims = list(spec.shape[1:] if batched else spec.shape)
    return {"name": spec.name, "data_type": codec.triton_config_type(oip) if oip else spec.dtype, "dims": dims}


def model_config(hosted: HostedModel) -> dict[str, Any]:
    """The Triton model configuration (JSON form) of a model version, as perf_analyzer reads it."""
    batched = hosted.batchable
    config: dict[str, Any] = {
        "name": hosted.name,
        "platform": PLATFORM,
        "backend": PLATFORM,
        "max_batch_size": hosted.options.max_batch_size if batched else 0,
        "input": [_config_tensor(s, batched) for s in hosted.signature.inputs],
        "output": [_config_tensor(s, batched) for s in hosted.signature.outputs],
        "instance_group": [{"kind": "KIND_CPU" if hosted.packaged.device.type == "cpu" else "KIND_GPU", "count": 1}],
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(hosted.options.max_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": hosted.options.queue_size},
        }
    return config


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def model_stats(hosted: HostedModel) -> dict[str, Any]:
    stats = hosted.stats
    batcher = hosted.batcher
    return {
        "name": hosted.name,
        "version": hosted.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": batcher.batches_run,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_ns),
            "fail": _duration(stats.fail_count, stats.fail_ns),
            "queue": _duration(stats.success_count, stats.queue_ns),
            "compute_input": _duration(stats.success_count, stats.input_ns),
            "compute_infer": _duration(stats.success_count, stats.infer_ns),
            "compute_output": _duration(stats.success_count, stats.output_ns),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(count, 0),
                "compute_infer": _duration(count, batcher.batch_infer_ns[size]),
                "compute_output": _duration(count, 0),
            }
            for size, count in sorted(batcher.batch_sizes.items())
        ],
    }


def _manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def oip_router(*, statistics: bool) -> APIRouter:
    """The ``/v2`` routes; ``statistics`` says whether to advertise the statistics extension."""
    router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])
    extensions = ["binary_tensor_data", "model_configuration", "model_repository"]
    if statistics:
        extensions.append("statistics")

    _add_health_routes(router, extensions)
    if statistics:  # before /models/{name}, which would take "stats" for a model name
        _add_stats_routes(router)
    _add_model_routes(router)
    return router


def _add_health_routes(router: APIRouter, extensions: list[str]) -> None:
    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return json_response({"name": "torchferry", "version": __version__, "extensions": extensions})

    @router.get("/health/live", summary="Server live")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready", summary="Server ready (503 while loading or draining)")
    async def ready(request: Request) -> Response:
        manager = _manager(request)
        if manager.ready:
            return json_response({"ready": True})
        why = "draining for shutdown" if manager.draining else "no model is loaded yet"
        raise NotReadyError(f"the server is not ready: {why}; retry shortly or on another replica.")

    @router.get("/models/{name}/ready", summary="Model ready")
    @router.get("/models/{name}/versions/{version}/ready", summary="Model version ready")
    async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
        hosted = _manager(request).get(name, version)
        if _manager(request).draining:
            raise NotReadyError(f"model {name} is draining for shutdown; retry on another replica.")
        return json_response({"name": hosted.name, "ready": True})


def _add_model_routes(router: APIRouter) -> None:
    @router.get("/models/{name}", summary="Model metadata")
    @router.get("/models/{name}/versions/{version}", summary="Model version metadata")
    async def metadata(request: Request, name: str, version: str | None = None) -> Response:
        manager = _manager(request)
        return json_response(model_metadata(manager, manager.get(name, version)))

    @router.get("/models/{name}/config", summary="Model configuration (Triton format)")
    @router.get("/models/{name}/versions/{version}/config", summary="Model version configuration")
    async def config(request: Request, name: str, version: str | None = None) -> Response:
        return json_response(model_config(_manager(request).get(name, version)))

    @router.post("/models/{name}/infer", summary="Inference (JSON or binary tensors)")
    @router.post("/models/{name}/versions/{version}/infer", summary="Inference on one version")
    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        hosted = _manager(request).for_inference(name, version)
        mark(request, hosted, "v2")
        return await _infer(request, hosted)


def _add_stats_routes(router: APIRouter) -> None:
    @router.get("/models/stats", summary="Statistics of every model")
    async def all_stats(request: Request) -> Response:
        return json_response({"model_stats": [model_stats(h) for h in _manager(request)]})

    @router.get("/models/{name}/stats", summary="Model statistics (Triton format)")
    @router.get("/models/{name}/versions/{version}/stats", summary="Model version statistics")
    async def stats(request: Request, name: str, version: str | None = None) -> Response:
        manager = _manager(request)
        manager.get(name, version)  # 404 for an unknown model or version
        hosted = [manager.get(name, version)] if version else [manager.get(name, v) for v in manager.versions(name)]
        return json_response({"model_stats": [model_stats(h) for h in hosted]})


def _header_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("inference-header-content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"Inference-Header-Content-Length must be an integer, got {raw!r}.") from None


def _refuse_complex(hosted: HostedModel) -> None:
    complex_specs = [
        s.describe() for s in (*hosted.signature.inputs, *hosted.signature.outputs) if "complex" in s.dtype
    ]
    if complex_specs:
        raise InputError(
            f"model {hosted.name} has complex tensors ({', '.join(complex_specs)}), which the Open Inference Protocol "
            f"has no datatype for; use POST /predict/{hosted.name} (complex values as [re, im] pairs)."
        )


def _parse(hosted: HostedModel, body: bytes, header_length: int | None) -> codec.InferRequest:
    _refuse_complex(hosted)
    if header_length == 0:
        inputs = hosted.signature.inputs
        if len(inputs) != 1:
            raise InputError(
                f"a raw binary request (Inference-Header-Content-Length: 0) needs a one-input model; "
                f"{hosted.name} takes {[s.name for s in inputs]}. Send a JSON header describing each input."
            )
        spec = inputs[0]
        return codec.parse_raw_binary(body, spec.name, _datatype(spec), list(spec.shape))
    return codec.parse_infer_request(body, header_length)


def _requested(hosted: HostedModel, parsed: codec.InferRequest) -> list[tuple[int, str, bool]]:
    names = [s.name for s in hosted.signature.outputs]
    if parsed.outputs is None:
        return [(i, n, parsed.binary_data_output) for i, n in enumerate(names)]
    wanted = []
    for output in parsed.outputs:
        if output.name not in names:
            raise InputError(f"model {hosted.name} has no output {output.name!r}; its outputs are {names}.")
        wanted.append((names.index(output.name), output.name, output.binary))
    return wanted


async def infer_call(
    hosted: HostedModel, body: bytes, headers: Mapping[str, str], state: dict[str, Any]
) -> tuple[bytes, dict[str, str], str]:
    """One OIP inference, independent of the web framework: (body, headers, media type) of the answer."""
    started = time.perf_counter_ns()
    parsed = _parse(hosted, body, _header_length(headers))
    tensors = hosted.check_inputs(parsed.inputs)
    wanted = _requested(hosted, parsed)
    hosted.stats.input_ns += time.perf_counter_ns() - started
    result = await hosted.infer(tensors, deadline=deadline_for(hosted, timeout_us=parsed.parameters.get("timeout")))
    state["batch"] = result.batch_size
    encode_start = time.perf_counter_ns()
    content, header_length = codec.encode_infer_response(
        model_name=hosted.name,
        model_version=hosted.version,
        request_id=parsed.id,
        outputs=[(name, result.outputs[i], binary) for i, name, binary in wanted],
        parameters=timing_parameters(result),
    )
    response_headers = timing_headers(result)
    media_type = "application/json"
    if header_length is not None:
        response_headers["inference-header-content-length"] = str(header_length)
        media_type = "application/octet-stream"
    hosted.stats.output_ns += time.perf_counter_ns() - encode_start
    return content, response_headers, media_type


async def _infer(request: Request, hosted: HostedModel) -> Response:
    body = await read_body(request)
    content, headers, media_type = await infer_call(hosted, body, request.headers, request.scope["state"])
    return Response(content, 200, headers, media_type=media_type)
