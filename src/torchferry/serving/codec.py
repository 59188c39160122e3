"""Open Inference Protocol v2 (KServe V2 / Triton) request and response bodies, as bytes in and out.

The server's HTTP routes stay thin because everything about the wire format lives here, pure and
testable without a server: the JSON header, the ``data`` lists, and Triton's binary tensor data
extension (a JSON header of ``Inference-Header-Content-Length`` bytes followed by raw little-endian
row-major tensor bytes, in input/output order). ``tritonclient`` and ``perf_analyzer`` send binary
inputs by default and ask for binary outputs, so that path is the hot one: tensors are built with
one ``np.frombuffer`` copy each, and JSON ``data`` goes through numpy and orjson, never a Python
loop over elements.

Rules this module applies to client requests (every violation is an :class:`InputError`, a 400):

* ``data`` may be nested or flat; only its element count must equal the product of ``shape``. A bare
  scalar is accepted when that product is 1.
* JSON number kinds must fit the datatype: ``BOOL`` takes ``true``/``false`` only; integer types take
  integers only, within the type's range; ``FP16``/``FP32``/``FP64``/``BF16`` take integers and floats
  but not booleans (a list of only booleans is refused; a list mixing booleans with numbers is
  coerced by numpy). ``null`` is refused everywhere. A float that overflows ``FP16``/``FP32`` is refused.
* ``BOOL`` binary data is one byte per element, 0 or 1. ``BYTES`` is refused: torch tensors cannot
  hold strings. Shared memory and classification parameters are refused (not implemented).
* Response ``data`` is a flat list; floats that are NaN or infinite are written as ``null``
  because JSON has no such numbers (tritonclient reads ``null`` back as NaN). Outputs never carry an
  empty ``"parameters": {}`` (perf_analyzer then fails looking for ``binary_data_size``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from torchferry.archive.signature import DTYPE_BY_NAME
from torchferry.errors import InputError

__all__ = [
    "OIP_DATATYPES",
    "InferRequest",
    "RequestedOutput",
    "encode_error",
    "encode_infer_response",
    "oip_datatype",
    "parse_infer_request",
    "parse_raw_binary",
    "split_body",
    "triton_config_type",
]

OIP_DATATYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "UINT16": torch.uint16,
    "UINT32": torch.uint32,
    "UINT64": torch.uint64,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "FP32": torch.float32,
    "FP64": torch.float64,
    "BF16": torch.bfloat16,
}
"""Every numeric OIP datatype → the torch dtype its tensors decode to (``BYTES`` has none)."""

_OIP_BY_TORCH: dict[torch.dtype, str] = {dtype: oip for oip, dtype in OIP_DATATYPES.items()}

# Little-endian element layout on the wire. BF16 travels as its 16 raw bits (numpy has no bfloat16).
_WIRE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("u1"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BF16": np.dtype("<i2"),
}

# The numpy dtypes torch.from_numpy accepts for each datatype (numpy has equivalent dtypes it does not,
# e.g. ulonglong for uint64), taken from torch itself. BF16 is held as its raw int16 bits.
_NATIVE: dict[str, np.dtype[Any]] = {
    oip: torch.empty(0, dtype=torch.int16 if oip == "BF16" else dtype).numpy().dtype
    for oip, dtype in OIP_DATATYPES.items()
}

# What JSON ``data`` is converted to before becoming a tensor (BF16 goes through float32).
_JSON_TARGET: dict[str, np.dtype[Any]] = {**_NATIVE, "BF16": np.dtype(np.float32)}

# numpy dtype kinds (b=bool, i=signed, u=unsigned, f=float) that JSON data may hold for each datatype.
_ACCEPTED_KINDS: dict[str, str] = {
    oip: "b" if oip == "BOOL" else "iuf" if oip.startswith(("FP", "BF")) else "iu" for oip in OIP_DATATYPES
}
_KIND_WORDS = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "floats",
    "U": "strings",
    "O": "nulls or objects",
}
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "the shared-memory extension is not supported; send the tensor in the request body",
    "classification": "the classification extension is not supported; request the output without it",
}


@dataclass(frozen=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: which output, and whether it should come back binary."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: tensors by name (request order, request shapes) and what to return."""

    id: str | None
    inputs: dict[str, torch.Tensor]
    outputs: list[RequestedOutput] | None
    binary_data_output: bool
    parameters: dict[str, Any]


def oip_datatype(dtype_name: str) -> str | None:
    """The OIP datatype of one of our dtype names (``"float32"`` → ``"FP32"``); None for complex types."""
    dtype = DTYPE_BY_NAME.get(dtype_name)
    if dtype is None:
        raise ValueError(f"unknown dtype name {dtype_name!r}; expected one of {', '.join(DTYPE_BY_NAME)}")
    return _OIP_BY_TORCH.get(dtype)


def triton_config_type(oip: str) -> str:
    """The Triton model-config ``data_type`` of an OIP datatype (``"FP32"`` → ``"TYPE_FP32"``)."""
    if oip == "BYTES":
        return "TYPE_STRING"
    if oip not in OIP_DATATYPES:
        raise ValueError(f"unknown OIP datatype {oip!r}; expected BYTES or one of {', '.join(OIP_DATATYPES)}")
    return f"TYPE_{oip}"


# ---------------------------------------------------------------------------------------------- requests


def split_body(body: bytes, header_length: int | None) -> tuple[bytes, bytes]:
    """Split a request body into its JSON header and binary tail.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None when absent: the whole
    body is JSON). 0 marks a raw binary request: no JSON at all, the whole body is tensor bytes.
    """
    header, tail = _split(body, header_length)
    return bytes(header), bytes(tail)


def _split(body: bytes, header_length: int | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    if header_length < 0 or header_length > len(view):
        raise InputError(
            f"Inference-Header-Content-Length is {header_length}, but the body is {len(view)} bytes; "
            f"expected a length from 0 to {len(view)}. Set it to the byte length of the JSON header "
            "(the whole body when there is no binary data), or leave it out for a JSON-only body."
        )
    return view[:header_length], view[header_length:]


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON followed by binary tensor data)."""
    if header_length == 0:
        raise InputError(
            "This is a raw binary request (Inference-Header-Content-Length: 0): the body has no JSON "
            "header naming inputs, shapes and datatypes. Raw binary requests are accepted only by models "
            "with exactly one input whose non-batch dimensions are fixed; for this model, send a JSON "
            "inference header (tritonclient does this for you)."
        )
    header, tail = _split(body, header_length)
    doc = _load_json(header, header_length)
    binary_data_output, parameters = _request_parameters(doc)
    return InferRequest(
        id=_request_id(doc),
        inputs=_parse_inputs(doc, tail),
        outputs=_parse_outputs(doc.get("outputs"), binary_data_output),
        binary_data_output=binary_data_output,
        parameters=parameters,
    )


def _load_json(header: memoryview, header_length: int | None) -> dict[str, Any]:
    hint = (
        f" Check that Inference-Header-Content-Length ({header_length}) is the byte length of the JSON header."
        if header_length is not None
        else " Binary data after the JSON needs an Inference-Header-Content-Length header giving the JSON's length."
    )
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as error:
        raise InputError(
            f"the inference request header is not valid JSON ({error}; {len(header)} bytes).{hint}"
        ) from None
    if not isinstance(doc, dict):
        raise InputError(
            f'The inference request must be a JSON object like {{"inputs": [...]}}, got a JSON '
            f'{_json_type(doc)}. Send an object with an "inputs" list.'
        )
    return doc


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _request_id(doc: dict[str, Any]) -> str | None:
    value = doc.get("id")
    if value is not None and not isinstance(value, str):
        raise InputError(
            f'The request "id" must be a string, got {_json_type(value)} {value!r}. '
            f'Send it as a string ("id": "{value}") or leave it out.'
        )
    return value


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(
            f'{where} "parameters" must be a JSON object, got {_json_type(value)} {value!r}. '
            'Send an object such as {"binary_data_size": 16}, or leave it out.'
        )
    return value


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InputError(
            f'{where} parameter "{key}" must be true or false, got {_json_type(value)} {value!r}. '
            f'Send "{key}": true or "{key}": false.'
        )
    return value


def _request_parameters(doc: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    parameters = dict(_parameters(doc.get("parameters"), "the request"))
    binary = _flag(parameters, "binary_data_output", False, "the request")
    parameters.pop("binary_data_output", None)
    return binary, parameters


def _parse_outputs(value: object, default_binary: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise InputError(
            f'The request "outputs" must be a list like [{{"name": "..."}}], got {_json_type(value)}. '
            'Send a list, or leave "outputs" out to get every output.'
        )
    requested: list[RequestedOutput] = []
    for index, item in enumerate(value):
        output = _requested_output(item, index, default_binary)
        if any(output.name == seen.name for seen in requested):
            raise InputError(f'Output {output.name!r} is requested twice in "outputs"; list each output once.')
        requested.append(output)
    return requested or None


def _requested_output(item: object, index: int, default_binary: bool) -> RequestedOutput:
    where = f"outputs[{index}]"
    if not isinstance(item, dict):
        raise InputError(f'{where} must be an object like {{"name": "..."}}, got {_json_type(item)} {item!r}.')
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f'{where} needs a non-empty string "name", got {name!r}. Name the output to return.')
    where = f"output {name!r}"
    parameters = _parameters(item.get("parameters"), where)
    _refuse_unsupported(parameters, where)
    return RequestedOutput(name, _flag(parameters, "binary_data", default_binary, where))


def _refuse_unsupported(parameters: dict[str, Any], where: str) -> None:
    for key, why in _UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise InputError(f'{where} has parameter "{key}", but {why}.')


def _parse_inputs(doc: dict[str, Any], tail: memoryview) -> dict[str, torch.Tensor]:
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        got = "nothing" if specs is None else f"{_json_type(specs)} {specs!r}"[:200]
        raise InputError(
            f'the request needs a non-empty "inputs" list, got {got}. Send '
            '"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}].'
        )
    inputs: dict[str, torch.Tensor] = {}
    offset = 0
    for index, spec in enumerate(specs):
        name, tensor, offset = _parse_input(spec, index, tail, offset)
        if name in inputs:
            raise InputError(f'Input {name!r} appears twice in "inputs"; send each input once.')
        inputs[name] = tensor
    if offset != len(tail):
        raise InputError(
            f"the body has {len(tail) - offset} bytes after the JSON header that no input claims: the "
            f"inputs' binary_data_size values add up to {offset}, the binary part is {len(tail)} bytes. "
            "Make each binary_data_size match its tensor, and Inference-Header-Content-Length the JSON's length."
        )
    return inputs


def _parse_input(spec: object, index: int, tail: memoryview, offset: int) -> tuple[str, torch.Tensor, int]:
    """One ``inputs`` entry → (name, tensor, offset of the next unread tail byte)."""
    if not isinstance(spec, dict):
        raise InputError(f"inputs[{index}] must be an object with name, shape, datatype and data; got {spec!r}.")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f'inputs[{index}] needs a non-empty string "name", got {name!r}.')
    where = f"input {name!r}"
    shape = _shape(spec.get("shape"), where)
    oip = _datatype(spec.get("datatype"), where)
    parameters = _parameters(spec.get("parameters"), where)
    _refuse_unsupported(parameters, where)
    if "binary_data_size" not in parameters:
        return name, _json_tensor(spec, oip, shape, where), offset
    if "data" in spec:
        raise InputError(f'{where} has both "data" and parameters.binary_data_size; send its values one way only.')
    size = _binary_size(parameters["binary_data_size"], oip, shape, where)
    if offset + size > len(tail):
        raise InputError(
            f"{where} says binary_data_size {size}, but only {len(tail) - offset} bytes of binary data are "
            f"left after the JSON header and earlier inputs. Send the tensor's {size} bytes, in input order."
        )
    return name, _tensor_from_bytes(tail[offset : offset + size], oip, shape, where), offset + size


def _shape(value: object, where: str) -> list[int]:
    if not isinstance(value, list) or not all(type(dim) is int and dim >= 0 for dim in value):
        raise InputError(
            f'{where} "shape" must be a list of non-negative integers such as [1, 3], got {value!r}. '
            "Give the full shape of the data sent, batch dimension included."
        )
    return value


def _datatype(value: object, where: str) -> str:
    if isinstance(value, str) and value in OIP_DATATYPES:
        return value
    if value == "BYTES":
        raise InputError(
            f"{where} has datatype BYTES, but torch tensors cannot hold strings and this model takes numeric "
            f"tensors. Send the input as one of {', '.join(OIP_DATATYPES)} (see the model's metadata)."
        )
    raise InputError(
        f"{where} has datatype {value!r}, expected one of {', '.join(OIP_DATATYPES)}. "
        "Use the datatype shown in the model's metadata (GET v2/models/<name>)."
    )


def _binary_size(value: object, oip: str, shape: list[int], where: str) -> int:
    expected = math.prod(shape) * _WIRE[oip].itemsize
    if type(value) is not int or value != expected:
        raise InputError(
            f"{where} has binary_data_size {value!r}, but shape {shape} of {oip} needs {math.prod(shape)} "
            f"elements x {_WIRE[oip].itemsize} bytes = {expected} bytes. Send the tensor's raw "
            "little-endian row-major bytes and set binary_data_size to their length."
        )
    return value


def _tensor_from_bytes(chunk: memoryview, oip: str, shape: list[int], where: str) -> torch.Tensor:
    """Raw little-endian row-major bytes → a writable tensor that owns its memory (one copy)."""
    wire = np.frombuffer(chunk, dtype=_WIRE[oip])
    if oip == "BOOL":
        _check_bool_bytes(wire, where)
    tensor = torch.from_numpy(wire.astype(_NATIVE[oip], copy=True).reshape(shape))
    return tensor.view(torch.bfloat16) if oip == "BF16" else tensor


def _check_bool_bytes(wire: np.ndarray[Any, Any], where: str) -> None:
    high = int(wire.max()) if wire.size else 0
    if high > 1:
        raise InputError(
            f"{where} is BOOL, whose binary data is one byte per element, 0 or 1; got a byte of value {high}. "
            "Send numpy bool arrays (np.bool_), not integers, as BOOL."
        )


def _json_tensor(spec: dict[str, Any], oip: str, shape: list[int], where: str) -> torch.Tensor:
    if "data" not in spec:
        raise InputError(
            f'{where} has neither "data" nor parameters.binary_data_size. Send its values as a JSON list '
            'in "data", or as binary data after the JSON header with parameters.binary_data_size.'
        )
    array = _json_array(spec["data"], where)
    count = math.prod(shape)
    if array.size != count:
        raise InputError(
            f'{where} has {array.size} values in "data", but shape {shape} needs {count}. '
            "Send exactly prod(shape) values, nested or flat, in row-major order."
        )
    if oip == "UINT64" and array.dtype.kind == "f":
        array = _as_uint64(spec["data"], array)
    if array.size:
        _check_kind(array, oip, where)
    converted = _convert(array, oip, where).reshape(shape)
    tensor = torch.from_numpy(converted)
    return tensor.to(torch.bfloat16) if oip == "BF16" else tensor


def _json_array(data: object, where: str) -> np.ndarray[Any, Any]:
    try:
        return np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InputError(
            f'{where} "data" is not a rectangular list of numbers: its nested lists differ in length. '
            "Send a flat list of prod(shape) values, or nested lists that all have the same length."
        ) from None


def _as_uint64(data: object, floats: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Re-read UINT64 data that numpy read as float64 because it mixes integers below and above 2**63.

    The result is uint64 only when every value is a whole number in range; otherwise ``floats`` comes
    back and the kind check refuses it.
    """
    try:
        exact = np.asarray(data, dtype=np.uint64)
    except (OverflowError, ValueError, TypeError):
        return floats
    return exact if np.array_equal(exact.astype(np.float64), floats) else floats


def _check_kind(array: np.ndarray[Any, Any], oip: str, where: str) -> None:
    kind = array.dtype.kind
    if kind in _ACCEPTED_KINDS[oip]:
        return
    got = _KIND_WORDS.get(kind, str(array.dtype))
    if oip == "BOOL":
        advice = "Send true/false for BOOL."
    elif kind == "f" and "f" not in _ACCEPTED_KINDS[oip]:
        advice = (
            f"Send whole numbers within {oip}'s range, or send the input as FP32 if the model takes floats "
            "(integers beyond 64 bits also read as floats)."
        )
    else:
        advice = f"Send numbers for {oip}."
    raise InputError(f'{where} is {oip}, but its "data" holds {got}. {advice}')


def _convert(array: np.ndarray[Any, Any], oip: str, where: str) -> np.ndarray[Any, Any]:
    """Cast checked JSON numbers to the datatype's numpy dtype, refusing values it cannot hold."""
    target = _JSON_TARGET[oip]
    if target.kind in "iu" and array.size and not np.can_cast(array.dtype, target):
        info = np.iinfo(target)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise InputError(
                f'{where} is {oip}, whose values must lie in [{info.min}, {info.max}], but "data" holds '
                f"values from {low} to {high}. Send values in range, or use a wider datatype the model accepts."
            )
    try:
        with np.errstate(over="raise"):
            return array.astype(target, copy=False).view(target)
    except FloatingPointError:
        raise InputError(
            f'{where} is {oip}, but "data" holds values beyond its largest finite value '
            f"({float(np.finfo(target).max):g}). Scale the values, or send them as FP32/FP64 if the model takes that."
        ) from None


def parse_raw_binary(body: bytes, name: str, oip: str, shape: list[int]) -> InferRequest:
    """Decode a raw binary request (``Inference-Header-Content-Length: 0``) for a single-input model.

    The body is the tensor's bytes alone, so the model's own input signature supplies name, datatype
    and shape. Raw requests are batch 1: a ``-1`` in dimension 0 reads as 1; all other dimensions must
    be fixed. Every output comes back binary.
    """
    if oip not in OIP_DATATYPES:
        raise ValueError(f"parse_raw_binary needs a numeric OIP datatype, got {oip!r}")
    dims = [1 if index == 0 and dim == -1 else dim for index, dim in enumerate(shape)]
    if any(dim < 0 for dim in dims):
        raise InputError(
            f"raw binary requests (Inference-Header-Content-Length: 0) need every input dimension fixed, "
            f"but input {name!r} has shape {shape}. Send a JSON inference header that gives the shape."
        )
    expected = math.prod(dims) * _WIRE[oip].itemsize
    if len(body) != expected:
        raise InputError(
            f"the raw binary request body is {len(body)} bytes, but input {name!r} ({oip}, shape {dims}, "
            f"batch 1) needs {expected}. Send exactly one {oip} tensor of shape {dims} as little-endian bytes."
        )
    tensor = _tensor_from_bytes(memoryview(body), oip, dims, f"input {name!r}")
    return InferRequest(id=None, inputs={name: tensor}, outputs=None, binary_data_output=True, parameters={})


# --------------------------------------------------------------------------------------------- responses


def encode_infer_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: list[tuple[str, torch.Tensor, bool]],
    parameters: dict[str, str | int | float | bool] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an inference response → (body, JSON header length, or None when no output is binary).

    ``outputs`` are (name, tensor, binary) in the order to send. ``id`` is written only when
    ``request_id`` is not None (an empty string is echoed as ``""``); ``model_version`` and
    ``parameters`` only when given. Binary outputs' bytes follow the JSON in output order.
    """
    entries: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    for name, tensor, binary in outputs:
        entry, buffer = _encode_output(name, tensor, binary)
        entries.append(entry)
        if buffer is not None:
            buffers.append(buffer)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    if parameters:
        doc["parameters"] = parameters
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not any(binary for _, _, binary in outputs):
        return header, None
    return b"".join([header, *buffers]), len(header)


def _encode_output(name: str, tensor: torch.Tensor, binary: bool) -> tuple[dict[str, Any], memoryview | None]:
    oip = _OIP_BY_TORCH.get(tensor.dtype)
    if oip is None:
        raise TypeError(f"output {name!r} has dtype {tensor.dtype}, which has no Open Inference Protocol datatype")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    entry: dict[str, Any] = {"name": name, "datatype": oip, "shape": list(tensor.shape)}
    if not binary:
        entry["data"] = _json_data(tensor)
        return entry, None
    wire = _wire_bytes(tensor, oip)
    entry["parameters"] = {"binary_data_size": wire.nbytes}
    return entry, wire.data


def _wire_bytes(tensor: torch.Tensor, oip: str) -> np.ndarray[Any, Any]:
    """The tensor as a C-contiguous little-endian array (no copy when it already is one)."""
    if oip == "BF16":
        tensor = tensor.view(torch.int16)
    array = np.ascontiguousarray(tensor.numpy())
    return array.astype(_WIRE[oip] if oip != "BOOL" else np.bool_, copy=False)


def _json_data(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """A flat native numpy array that orjson writes as a JSON list (BF16 as float32 numbers)."""
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return np.ascontiguousarray(tensor.numpy().ravel())


def encode_error(message: str) -> bytes:
    """The OIP error body, ``{"error": message}``, that tritonclient and perf_analyzer read."""
    return orjson.dumps({"error": message})
