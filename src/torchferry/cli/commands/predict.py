"""``torchferry predict``: one prediction from a running server, or from an archive run here.

Also the request building ``torchferry bench`` shares: reading ``--input`` (JSON text,
``@file.json``, an image file), the simple-JSON and Open Inference Protocol bodies, and
finding the model a server serves.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table
from rich.text import Text

from torchferry.cli._http import Endpoint, Response, fetch, is_url, server_error
from torchferry.cli._render import console
from torchferry.cli.commands.registry import HOME_VARIABLE
from torchferry.errors import UsageError

__all__ = [
    "IMAGE_TYPES",
    "PROTOCOLS",
    "Given",
    "Target",
    "metadata",
    "predict_command",
    "read_input",
    "served_model",
    "simple_body",
    "v2_body",
]

EPILOG = """Examples:

  torchferry predict http://127.0.0.1:8080 --model iris --input '[[5.1, 3.5, 1.4, 0.2]]'

  torchferry predict http://127.0.0.1:8080 --model iris --input @rows.json --json

  torchferry predict http://127.0.0.1:8080 --model resnet --input cat.jpg     # an image, for image archives

  torchferry predict http://127.0.0.1:8080 --model iris --input '{"input": [[5.1, 3.5, 1.4, 0.2]]}' --protocol v2

  torchferry predict iris.ferry --input '[5.1, 3.5, 1.4, 0.2]'               # no server: run the archive here

  torchferry predict iris@production --input @rows.json                     # a registry reference

--model may be left out when the server serves one model. A server's error is printed with its
status and the exit status is 1.
"""

PROTOCOLS = ("simple", "v2")

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
"""Files sent as the raw request body with their image content type."""

INPUT_HELP = (
    """JSON text ('[[5.1, 3.5, 1.4, 0.2]]', '{"x": [[...]]}'), @file.json (@- reads standard input), """
    f"or an image file ({', '.join(IMAGE_TYPES)})."
)

_FLOAT_TYPES = ("FP16", "FP32", "FP64", "BF16")
_INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")


@dataclass(frozen=True)
class Given:
    """What ``--input`` holds: a JSON value, or an image file's bytes and content type."""

    source: str
    value: Any = None
    image: bytes | None = None
    content_type: str = "application/json"


def _json_file(path: Path, source: str) -> Given:
    try:
        text = sys.stdin.read() if source == "@-" else path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read --input {source}: {exc.strerror or exc}.") from None
    try:
        return Given(source, value=json.loads(text))
    except ValueError as exc:
        raise UsageError(f"--input {source} is not valid JSON ({exc}).") from None


def _image_file(path: Path, source: str) -> Given:
    try:
        return Given(source, image=path.read_bytes(), content_type=IMAGE_TYPES[path.suffix.lower()])
    except OSError as exc:
        raise UsageError(f"cannot read the image {path}: {exc.strerror or exc}.") from None


def read_input(text: str) -> Given:
    """``--input``: JSON text, ``@file.json`` (``@-``: standard input), or an image file's path."""
    if text.startswith("@"):
        path = Path(text[1:])
        return _image_file(path, text) if path.suffix.lower() in IMAGE_TYPES else _json_file(path, text)
    try:
        return Given("--input", value=json.loads(text))
    except ValueError as exc:
        error = exc
    path = Path(text)
    if path.suffix.lower() in IMAGE_TYPES:
        if not path.is_file():
            raise UsageError(f"--input {text}: no such image file.")
        return _image_file(path, text)
    if path.is_file():
        return _json_file(path, text)
    raise UsageError(
        f"--input is not valid JSON ({error}) and not a file; give JSON such as '[[5.1, 3.5, 1.4, 0.2]]' "
        """or '{"x": [[...]]}', @rows.json for a JSON file, or the path of an image (""" + ", ".join(IMAGE_TYPES) + ")."
    )


def _unwrapped(value: Any) -> Any:
    """``{"inputs": X}`` → X; anything else as given."""
    return value["inputs"] if isinstance(value, dict) and set(value) == {"inputs"} else value


@dataclass(frozen=True)
class Target:
    """A model on a server: the endpoint, its name and optionally a version."""

    endpoint: Endpoint
    model: str
    version: str | None
    timeout: float

    def path(self, protocol: str) -> str:
        if protocol == "v2":
            return f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "") + "/infer"
        return f"/predict/{self.model}" + (f"/versions/{self.version}" if self.version else "")

    def get(self, path: str) -> Response:
        response, _ = fetch(self.endpoint, "GET", path, timeout=self.timeout)
        if not response.ok:
            raise server_error(response, f"GET {self.endpoint.url(path)}")
        return response


def served_model(endpoint: Endpoint, model: str | None, timeout: float) -> str:
    """``model``, or else the one model the server serves (asked at ``GET /v1/models``)."""
    if model:
        return model
    response, _ = fetch(endpoint, "GET", "/v1/models", timeout=timeout)
    payload = response.json() if response.ok else None
    names = payload.get("models") if isinstance(payload, dict) else None
    if not isinstance(names, list) or not names:
        raise UsageError(f"name the model to use with --model (GET {endpoint.url('/v1/models')} did not list any).")
    if len(names) > 1:
        raise UsageError(f"the server serves {', '.join(map(str, names))}: name one with --model.")
    return str(names[0])


def metadata(target: Target) -> dict[str, Any]:
    """The model's Open Inference Protocol metadata (input names, datatypes, shapes)."""
    path = f"/v2/models/{target.model}" + (f"/versions/{target.version}" if target.version else "")
    found = target.get(path).json()
    if not isinstance(found, dict) or not isinstance(found.get("inputs"), list):
        raise UsageError(f"GET {target.endpoint.url(path)} did not answer with model metadata (no 'inputs' list).")
    return found


def simple_body(given: Given) -> bytes:
    """The ``/predict/{m}`` body: the image itself, or ``{"inputs": ...}`` as JSON."""
    if given.image is not None:
        return given.image
    return json.dumps({"inputs": _unwrapped(given.value)}).encode()


def _is_oip_request(value: Any) -> bool:
    inputs = value.get("inputs") if isinstance(value, dict) else None
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(i, dict) and "datatype" in i for i in inputs)


def _oip_tensor(spec: dict[str, Any], value: Any) -> tuple[dict[str, Any], bool]:
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists
        raise UsageError(
            f"input {spec['name']!r} is not a rectangular nested list (rows of different lengths)."
        ) from None
    if array.dtype == object:
        raise UsageError(f"input {spec['name']!r} is not a rectangular nested list of numbers.")
    shape = spec.get("shape") or []
    unbatched = len(shape) == array.ndim + 1 and shape[0] == -1
    if unbatched:
        array = array[np.newaxis]
    tensor = {"name": spec["name"], "datatype": spec["datatype"], "shape": list(array.shape)}
    tensor["data"] = array.reshape(-1).tolist()
    return tensor, unbatched


def v2_body(given: Given, meta: dict[str, Any]) -> tuple[bytes, bool]:
    """An Open Inference Protocol infer request for ``given``, with names and datatypes from the
    model's metadata and shapes from the nested lists; and whether the batch dimension was added."""
    if given.image is not None:
        raise UsageError(
            "--protocol v2 sends tensors as JSON; an image goes to /predict with the simple protocol (leave out "
            "--protocol), or give the pre-processed tensor as JSON."
        )
    if _is_oip_request(given.value):  # already an OIP request: send it as it is
        return json.dumps(given.value).encode(), False
    value = _unwrapped(given.value)
    specs = [s for s in meta["inputs"] if isinstance(s, dict) and "name" in s]
    names = [str(s["name"]) for s in specs]
    if not isinstance(value, dict):
        if len(specs) != 1:
            raise UsageError(f"the model takes inputs {names}: give --input as a JSON object by input name.")
        value = {names[0]: value}
    if sorted(value) != sorted(names):
        raise UsageError(f"the model takes inputs {names}; --input gives {sorted(value)}.")
    tensors, added = zip(*(_oip_tensor(spec, value[spec["name"]]) for spec in specs))
    return json.dumps({"inputs": list(tensors)}).encode(), all(added)


def example_value(meta: dict[str, Any]) -> dict[str, Any]:
    """Made-up inputs of the metadata's shapes (free dimensions 1): normal floats, zero integers."""
    rng = np.random.default_rng(0)
    value: dict[str, Any] = {}
    for spec in meta["inputs"]:
        shape = [1 if int(d) < 0 else int(d) for d in spec.get("shape") or []]
        datatype = str(spec.get("datatype", "")).upper()
        if datatype in _FLOAT_TYPES:
            value[spec["name"]] = rng.standard_normal(shape).astype(np.float32).round(4).tolist()
        elif datatype in _INT_TYPES:
            value[spec["name"]] = np.zeros(shape, dtype=np.int64).tolist()
        elif datatype == "BOOL":
            value[spec["name"]] = np.zeros(shape, dtype=bool).tolist()
        else:
            raise UsageError(f"cannot make up a value for input {spec['name']!r} ({datatype}); give --input.")
    return value


def _v2_outputs(payload: Any, strip_batch: bool) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for tensor in payload.get("outputs", []) if isinstance(payload, dict) else []:
        data = tensor.get("data")
        if data is None:
            outputs[tensor["name"]] = "(binary data)"
            continue
        array = np.asarray(data).reshape(tensor.get("shape") or np.shape(data))
        outputs[tensor["name"]] = array[0] if strip_batch and array.ndim else array
    return outputs


def _is_ranked(value: Any) -> bool:
    first = value[0] if isinstance(value, list) and value else None
    first = first[0] if isinstance(first, list) and first else first
    return isinstance(first, dict) and "label" in first


def _ranked_text(value: list[Any]) -> str:
    samples = value if isinstance(value[0], list) else [value]
    return "\n".join(" · ".join(f"{r['label']} {float(r['score']):.4g}" for r in sample) for sample in samples)


def _cells(value: Any) -> tuple[str, str]:
    """(shape, value) cells for one output."""
    if _is_ranked(value):
        return f"top {len(value[0]) if isinstance(value[0], list) else len(value)}", _ranked_text(value)
    if isinstance(value, str):
        return "", value
    array = np.asarray(value)
    shape = "[" + ", ".join(str(d) for d in array.shape) + "]"
    if array.dtype.kind == "f":
        text = np.array2string(array, precision=4, threshold=60, max_line_width=100, suppress_small=True)
    else:
        text = np.array2string(array, threshold=60, max_line_width=100)
    return shape, text


def _label_cell(label: Any) -> str:
    return ", ".join(map(str, label)) if isinstance(label, list) else str(label)


def render_prediction(content: dict[str, Any], footer: str) -> None:
    """Outputs (values, or ranked labels with scores), argmax labels, then ``footer`` (timings)."""
    version = content.get("version") or content.get("model_version")
    title = f"{content.get('model') or content.get('model_name', 'model')}" + (f":{version}" if version else "")
    labels = content.get("labels") or {}
    table = Table(title=title, title_justify="left")
    for column in ("output", "shape", "value", *(("label",) if labels else ())):
        table.add_column(column)
    for name, value in (content.get("outputs") or {}).items():
        shape, text = _cells(value)
        row = [Text(str(name)), Text(shape), Text(text)]
        if labels:
            row.append(Text(_label_cell(labels[name]) if name in labels else ""))
        table.add_row(*row)
    console.print(table)
    console.print(Text(footer), highlight=False, soft_wrap=True)


def _ms(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g} ms"


def timing_footer(response: Response, round_trip_ms: float) -> str:
    timing = response.timing
    parts = []
    if timing.queue_ms is not None:
        parts.append(f"queue {_ms(timing.queue_ms)}")
    if timing.infer_ms is not None:
        parts.append(f"infer {_ms(timing.infer_ms)}")
    if timing.batch_size is not None:
        parts.append(f"batch of {timing.batch_size}")
    if timing.total_ms is not None:
        parts.append(f"total {_ms(timing.total_ms)}")
    server = "server: " + ", ".join(parts) + "; " if parts else ""
    request_id = response.headers.get("x-request-id")
    return f"{server}round trip {_ms(round_trip_ms)}" + (f"; request id {request_id}" if request_id else "")


def _predict_remote(target: Target, given: Given, protocol: str, as_json: bool) -> None:
    strip_batch = False
    if protocol == "v2":
        body, strip_batch = v2_body(given, metadata(target))
        content_type = "application/json"
    else:
        body, content_type = simple_body(given), given.content_type
    path = target.path(protocol)
    response, round_trip = fetch(target.endpoint, "POST", path, body, content_type=content_type, timeout=target.timeout)
    if not response.ok:
        raise server_error(response, f"POST {target.endpoint.url(path)}")
    if as_json:
        print(response.body.decode("utf-8", "replace"))
        return
    content = response.json()
    if not isinstance(content, dict):
        raise UsageError(f"POST {target.endpoint.url(path)} answered with JSON that is not an object.")
    if protocol == "v2":
        content = {**content, "outputs": _v2_outputs(content, strip_batch)}
    render_prediction(content, timing_footer(response, round_trip))


def _argmax_labels(labels: tuple[str, ...] | None, outputs: dict[str, Any]) -> dict[str, Any]:
    """Like the server: the label of the top score, for outputs with one score per label."""
    found: dict[str, Any] = {}
    for name, value in outputs.items() if labels else ():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and labels and value.shape[-1] == len(labels):
            top = value.argmax(axis=-1)
            found[name] = labels[int(top)] if top.ndim == 0 else [labels[int(i)] for i in top.reshape(-1)]
    return found


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dumps(content: dict[str, Any]) -> str:
    """JSON like the server writes it (float32 numbers in their shortest form, with orjson where installed)."""
    try:
        import orjson
    except ImportError:
        return json.dumps(_jsonable(content))
    return orjson.dumps(_contiguous(content), option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _contiguous(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value) if value.ndim else value.item()
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_contiguous(v) for v in value]
    return value


def _predict_here(
    source: str, given: Given, model: str | None, *, trust_code: bool, registry: Path | None, device: str | None
) -> tuple[dict[str, Any], float]:
    from torchferry.registry.api import load_model
    from torchferry.registry.registry import Registry

    packaged = load_model(
        source, registry=None if registry is None else Registry(registry), trust_code=trust_code, device=device
    )
    name = packaged.manifest.name
    if model and model != name:
        raise UsageError(f"{source} holds model {name!r}, not {model!r}; leave out --model for a file.")
    inputs = given.image if given.image is not None else _unwrapped(given.value)
    start = time.perf_counter()
    outputs = packaged.predict(inputs)
    elapsed = 1000 * (time.perf_counter() - start)
    content: dict[str, Any] = {"model": name, "version": packaged.manifest.version, "outputs": outputs}
    labels = _argmax_labels(packaged.labels, outputs)
    if labels:
        content["labels"] = labels
    return content, elapsed


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")


def predict_command(
    target: Annotated[
        str,
        typer.Argument(
            help="A server's URL (http://127.0.0.1:8080), or a .ferry file or registry reference to run here.",
            show_default=False,
        ),
    ],
    input_: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help=INPUT_HELP,
            show_default=False,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="The model on the server [default: the only one it serves].", show_default=False
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="The model version on the server [default: its default].", show_default=False)
    ] = None,
    protocol: Annotated[
        str,
        typer.Option(help="simple (POST /predict/M) or v2 (Open Inference Protocol, POST /v2/models/M/infer)."),
    ] = "simple",
    as_json: Annotated[bool, typer.Option("--json", help="Print the response JSON as it came.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.", min=0.001)] = 30.0,
    trust_code: Annotated[
        bool,
        typer.Option("--trust-code", help="Run a local archive that carries Python code (only ones you trust)."),
    ] = False,
    registry: Annotated[
        Path | None,
        typer.Option(
            help=f"The registry a reference is looked up in (default: ${HOME_VARIABLE}, else the user data directory).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="Device a local archive runs on, e.g. cuda:0 [default: cpu].", show_default=False)
    ] = None,
) -> None:
    """Send one request to a model server and print the outputs, labels and the server's
    timing (queue, inference, batch size, total); or, given a .ferry file or a registry
    reference instead of a URL, run the archive here with the same inputs.
    """
    _check_protocol(protocol)
    if "://" in target and not is_url(target):
        raise UsageError(f"{target!r}: only http:// and https:// servers are supported.")
    given = read_input(input_)
    if is_url(target):
        endpoint = Endpoint.parse(target)
        name = served_model(endpoint, model, timeout)
        _predict_remote(Target(endpoint, name, version, timeout), given, protocol, as_json)
        return
    if version is not None:
        raise UsageError("--version picks a version on a server; for a registry reference write NAME:VERSION (iris:3).")
    if protocol != "simple":
        raise UsageError("--protocol applies to a server URL; a file or registry reference runs here.")
    content, elapsed = _predict_here(target, given, model, trust_code=trust_code, registry=registry, device=device)
    if as_json:
        print(_dumps(content))
        return
    render_prediction(content, f"ran here in {elapsed:.3g} ms (no server)")
