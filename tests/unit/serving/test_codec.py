"""OIP v2 codec: what tritonclient builds parses exactly, what we encode tritonclient reads back exactly."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
import torch
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request

from torchferry.archive.manifest import DTYPES
from torchferry.errors import InputError
from torchferry.serving.codec import (
    OIP_DATATYPES,
    InferRequest,
    RequestedOutput,
    encode_error,
    encode_infer_response,
    oip_datatype,
    parse_infer_request,
    parse_raw_binary,
    split_body,
    triton_config_type,
)

pytestmark = pytest.mark.unit

ALL_OIP = list(OIP_DATATYPES)


def sample(oip: str, shape: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    """A tensor of ``oip`` whose values exercise the type: extremes for integers, fractions for floats."""
    dtype = OIP_DATATYPES[oip]
    count = int(np.prod(shape))
    if oip == "BOOL":
        return (torch.arange(count) % 3 == 0).reshape(shape)
    if dtype.is_floating_point:
        values = torch.tensor([0.1, -2.5, 3.0, 1e-3, -0.0, 65000.0] * count, dtype=torch.float64)[:count]
        return values.to(dtype).reshape(shape)
    info = np.iinfo(str(dtype).removeprefix("torch."))
    values = np.array([info.min, info.max, 0, 1, info.max // 3, info.min // 2] * count, dtype=info.dtype)[:count]
    return torch.from_numpy(values).reshape(shape)


def to_numpy(tensor: torch.Tensor) -> np.ndarray[Any, Any]:
    """The numpy array tritonclient expects for ``tensor`` (ml_dtypes.bfloat16 for BF16)."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def client_body(
    inputs: list[InferInput], outputs: list[InferRequestedOutput] | None = None, **options: Any
) -> tuple[bytes, int | None]:
    """The exact body and Inference-Header-Content-Length that tritonclient.http would send."""
    settings = {"request_id": "", "sequence_id": 0, "sequence_start": False, "sequence_end": False}
    settings |= {"priority": 0, "timeout": None, "custom_parameters": None} | options
    body, json_size = _get_inference_request(inputs=inputs, outputs=outputs, **settings)
    return (body.encode() if isinstance(body, str) else body), json_size


def client_input(name: str, tensor: torch.Tensor, binary: bool) -> InferInput:
    oip = next(key for key, dtype in OIP_DATATYPES.items() if dtype == tensor.dtype)
    entry = InferInput(name, list(tensor.shape), oip)
    entry.set_data_from_numpy(to_numpy(tensor), binary_data=binary)
    return entry


def client_read(body: bytes, header_length: int | None) -> InferResult:
    return InferResult.from_response_body(body, verbose=False, header_length=header_length, content_encoding=None)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)


def json_request(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def fp32_input(**fields: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} | fields


# ------------------------------------------------------------------------------------------ datatype names


def test_every_project_dtype_maps_to_an_oip_datatype_except_complex() -> None:
    got = {name: oip_datatype(name) for name in DTYPES}
    assert got == {
        "float16": "FP16",
        "bfloat16": "BF16",
        "float32": "FP32",
        "float64": "FP64",
        "complex64": None,
        "complex128": None,
        "uint8": "UINT8",
        "int8": "INT8",
        "int16": "INT16",
        "int32": "INT32",
        "int64": "INT64",
        "bool": "BOOL",
    }
    for oip in got.values():
        if oip is not None:
            assert OIP_DATATYPES[oip] == getattr(torch, next(k for k, v in got.items() if v == oip))
    with pytest.raises(ValueError, match="float32"):
        oip_datatype("float")


def test_triton_config_types() -> None:
    assert triton_config_type("FP32") == "TYPE_FP32"
    assert triton_config_type("BF16") == "TYPE_BF16"
    assert triton_config_type("BYTES") == "TYPE_STRING"
    assert all(triton_config_type(oip) == f"TYPE_{oip}" for oip in ALL_OIP)
    with pytest.raises(ValueError, match="FP32"):
        triton_config_type("FLOAT")


# -------------------------------------------------------------------------------- tritonclient → request


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("oip", ALL_OIP)
def test_tritonclient_requests_decode_exactly(oip: str, binary: bool) -> None:
    tensor = sample(oip)
    if oip == "BF16" and not binary:
        # tritonclient refuses BF16 over JSON; other clients send float numbers, which we accept.
        body = json_request([{"name": "x", "shape": [2, 3], "datatype": "BF16", "data": tensor.float().tolist()}])
        header_length = None
    else:
        body, header_length = client_body([client_input("x", tensor, binary)])
    assert (header_length is None) is not binary
    request = parse_infer_request(body, header_length)
    assert list(request.inputs) == ["x"]
    assert_same(request.inputs["x"], tensor)


def test_tritonclient_defaults_all_outputs_binary_and_passes_parameters() -> None:
    body, header_length = client_body(
        [client_input("a", sample("FP32"), True), client_input("b", sample("INT64", (4,)), False)],
        request_id="req-7",
        timeout=1500,
        priority=2,
    )
    request = parse_infer_request(body, header_length)
    assert request.id == "req-7"
    assert request.outputs is None and request.binary_data_output is True
    assert request.parameters == {"timeout": 1500, "priority": 2}
    assert list(request.inputs) == ["a", "b"]
    assert_same(request.inputs["b"], sample("INT64", (4,)))


def test_tritonclient_requested_outputs_keep_their_binary_flags() -> None:
    outputs = [InferRequestedOutput("y", binary_data=False), InferRequestedOutput("z")]
    body, header_length = client_body([client_input("x", sample("FP16"), True)], outputs)
    request = parse_infer_request(body, header_length)
    assert request.id is None and request.binary_data_output is False and request.parameters == {}
    assert request.outputs == [RequestedOutput("y", False), RequestedOutput("z", True)]


def test_binary_inputs_consume_the_tail_in_order_between_json_inputs() -> None:
    tensors = {"a": sample("UINT8", (5,)), "b": sample("FP64", (1, 2)), "c": sample("BOOL", (3,)), "d": sample("BF16")}
    inputs = [client_input(name, t, binary=name != "b") for name, t in tensors.items()]
    request = parse_infer_request(*client_body(inputs))
    assert list(request.inputs) == list(tensors)
    for name, tensor in tensors.items():
        assert_same(request.inputs[name], tensor)


def test_perf_analyzer_style_body_with_empty_id_and_header_length_equal_to_body() -> None:
    body = orjson.dumps(
        {
            "id": "",
            "inputs": [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [5, 6]}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    )
    request = parse_infer_request(body, len(body))
    assert request.id == ""
    assert request.outputs == [RequestedOutput("y", True)]
    assert_same(request.inputs["x"], torch.tensor([[5, 6]], dtype=torch.int32))


def test_nested_and_flat_data_give_the_same_tensor() -> None:
    flat = parse_infer_request(json_request([fp32_input(shape=[2, 2], data=[1, 2.5, 3, 4])]), None)
    nested = parse_infer_request(json_request([fp32_input(shape=[2, 2], data=[[1, 2.5], [3, 4]])]), None)
    assert_same(flat.inputs["x"], torch.tensor([[1, 2.5], [3, 4]]))
    assert_same(nested.inputs["x"], flat.inputs["x"])


@pytest.mark.parametrize("shape", [[], [1], [1, 1]])
def test_a_scalar_is_data_for_a_single_element(shape: list[int]) -> None:
    request = parse_infer_request(json_request([{"name": "x", "shape": shape, "datatype": "INT16", "data": 7}]), None)
    assert_same(request.inputs["x"], torch.full(shape, 7, dtype=torch.int16))


def test_empty_tensors_decode_from_json_and_binary() -> None:
    empty = torch.zeros((0, 3), dtype=torch.int8)
    assert_same(parse_infer_request(*client_body([client_input("x", empty, True)])).inputs["x"], empty)
    body = json_request([{"name": "x", "shape": [0, 3], "datatype": "INT8", "data": []}])
    assert_same(parse_infer_request(body, None).inputs["x"], empty)


def test_json_number_coercions_that_are_accepted() -> None:
    body = json_request(
        [
            {"name": "f", "shape": [3], "datatype": "FP16", "data": [1, 2, 0.5]},
            {"name": "u", "shape": [1], "datatype": "UINT64", "data": [2**64 - 1]},
            {"name": "b", "shape": [2], "datatype": "BF16", "data": [1, 0.25]},
        ]
    )
    inputs = parse_infer_request(body, None).inputs
    assert_same(inputs["f"], torch.tensor([1, 2, 0.5], dtype=torch.float16))
    assert inputs["u"].dtype == torch.uint64 and inputs["u"].numpy()[0] == 2**64 - 1
    assert_same(inputs["b"], torch.tensor([1, 0.25], dtype=torch.bfloat16))


def test_empty_outputs_list_means_all_outputs_and_other_parameters_pass_through() -> None:
    body = json_request([fp32_input()], outputs=[], parameters={"binary_data_output": True, "custom": "v"})
    request = parse_infer_request(body, None)
    assert request.outputs is None and request.binary_data_output is True
    assert request.parameters == {"custom": "v"}
    with_defaults = json_request([fp32_input(parameters={"unknown": 1})], outputs=[{"name": "y"}], extra_key=1)
    request = parse_infer_request(with_defaults, None)
    assert request.outputs == [RequestedOutput("y", False)] and request.parameters == {}


def test_decoded_tensors_own_writable_memory() -> None:
    body, header_length = client_body([client_input("x", sample("FP32"), True)])
    tensor = parse_infer_request(body, header_length).inputs["x"]
    tensor += 1  # would fail (or warn) on a read-only buffer
    assert_same(parse_infer_request(body, header_length).inputs["x"], sample("FP32"))


def test_split_body() -> None:
    assert split_body(b'{"a":1}xyz', 7) == (b'{"a":1}', b"xyz")
    assert split_body(b'{"a":1}', None) == (b'{"a":1}', b"")
    assert split_body(b"\x00\x01", 0) == (b"", b"\x00\x01")
    with pytest.raises(InputError, match="from 0 to 2"):
        split_body(b"ab", 3)
    with pytest.raises(InputError, match="is -1"):
        split_body(b"ab", -1)


# ------------------------------------------------------------------------------------------ raw binary


def test_raw_binary_request_is_batch_one_with_all_outputs_binary() -> None:
    tensor = sample("FP32", (1, 3, 2))
    request = parse_raw_binary(tensor.numpy().tobytes(), "image", "FP32", [-1, 3, 2])
    assert request == InferRequest(None, request.inputs, None, True, {})
    assert_same(request.inputs["image"], tensor)
    assert_same(parse_raw_binary(b"\x01\x00", "flags", "BOOL", [2]).inputs["flags"], torch.tensor([True, False]))


def test_raw_binary_errors() -> None:
    with pytest.raises(InputError, match=r"body is 4 bytes.*needs 24"):
        parse_raw_binary(b"\x00" * 4, "image", "FP32", [-1, 3, 2])
    with pytest.raises(InputError, match=r"every input dimension fixed.*\[-1, -1\]"):
        parse_raw_binary(b"", "image", "FP32", [-1, -1])
    with pytest.raises(InputError, match="raw binary request"):
        parse_infer_request(b"\x00" * 8, 0)


# ------------------------------------------------------------------------------------ response → tritonclient


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("oip", ALL_OIP)
def test_tritonclient_reads_our_responses_exactly(oip: str, binary: bool) -> None:
    tensor = sample(oip, (2, 3))
    body, header_length = encode_infer_response(
        model_name="m", model_version="1", request_id="r", outputs=[("y", tensor, binary)]
    )
    assert (header_length is None) is not binary
    result = client_read(body, header_length)
    got = result.as_numpy("y")
    want = to_numpy(tensor)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(
        got.view(np.int16) if oip == "BF16" else got, want.view(np.int16) if oip == "BF16" else want
    )
    assert result.get_response()["id"] == "r"
    assert result.get_response()["model_version"] == "1"


def test_mixed_outputs_and_response_fields() -> None:
    outputs = [
        ("a", sample("FP32"), True),
        ("b", sample("INT64", (4,)), False),
        ("c", torch.zeros((0, 2), dtype=torch.uint8), True),
        ("d", sample("BF16", (3, 1)).t(), True),  # non-contiguous
        ("e", torch.tensor(2.5, dtype=torch.float64), False),  # 0-d
    ]
    body, header_length = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=outputs, parameters={"batch_size": 3}
    )
    assert header_length is not None
    result = client_read(body, header_length)
    response = result.get_response()
    assert set(response) == {"model_name", "parameters", "outputs"}
    assert response["parameters"] == {"batch_size": 3}
    assert [output["name"] for output in response["outputs"]] == ["a", "b", "c", "d", "e"]
    for name, tensor, _ in outputs:
        np.testing.assert_array_equal(result.as_numpy(name).astype(np.float64), tensor.double().numpy())
    assert len(body) == header_length + 24 + 0 + 6


def test_no_output_ever_carries_empty_parameters() -> None:
    outputs = [(f"{oip}-{binary}", sample(oip), binary) for oip in ALL_OIP for binary in (True, False)]
    body, header_length = encode_infer_response(model_name="m", model_version=None, request_id="", outputs=outputs)
    response = orjson.loads(body[:header_length])
    assert response["id"] == ""
    for output in response["outputs"]:
        if output["name"].endswith("True"):
            assert output["parameters"] == {"binary_data_size": sample(output["datatype"]).nbytes}
            assert "data" not in output
        else:
            assert "parameters" not in output
            assert len(output["data"]) == 6


def test_json_only_response_has_no_header_length() -> None:
    body, header_length = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", torch.tensor([1.5, -1.0]), False)]
    )
    assert header_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.5, -1.0]}],
    }


def test_non_finite_floats_go_out_as_null_in_json_and_exactly_in_binary() -> None:
    tensor = torch.tensor([float("nan"), float("inf"), 1.0])
    body, _ = encode_infer_response(model_name="m", model_version=None, request_id=None, outputs=[("y", tensor, False)])
    assert orjson.loads(body)["outputs"][0]["data"] == [None, None, 1.0]
    body, header_length = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", tensor, True)]
    )
    np.testing.assert_array_equal(client_read(body, header_length).as_numpy("y"), tensor.numpy())


def test_outputs_on_autograd_tensors_and_complex_dtype() -> None:
    tensor = torch.ones(2, requires_grad=True) * 2
    body, header_length = encode_infer_response(
        model_name="m", model_version=None, request_id=None, outputs=[("y", tensor, True)]
    )
    np.testing.assert_array_equal(client_read(body, header_length).as_numpy("y"), [2.0, 2.0])
    with pytest.raises(TypeError, match="complex64"):
        encode_infer_response(
            model_name="m",
            model_version=None,
            request_id=None,
            outputs=[("y", torch.ones(1, dtype=torch.cfloat), True)],
        )


def test_encode_error() -> None:
    assert orjson.loads(encode_error('bad "x"\n')) == {"error": 'bad "x"\n'}


# ------------------------------------------------------------------------------------------------ errors


def binary_fp32(size: Any, tail: bytes = b"\x00" * 8, with_data: bool = False, **fields: Any) -> tuple[bytes, int]:
    """A body with one binary input ``x`` of shape [2] (FP32 unless ``fields`` say otherwise)."""
    spec = fp32_input(parameters={"binary_data_size": size}) | fields
    if not with_data:
        del spec["data"]
    header = json_request([spec])
    return header + tail, len(header)


ERRORS: dict[str, tuple[bytes, int | None, str]] = {
    "not json": (b"{inputs: [", None, "not valid JSON"),
    "empty body": (b"", None, "not valid JSON"),
    "header length too short": (b'{"inputs": []}', 5, r"Check that Inference-Header-Content-Length \(5\)"),
    "header length beyond body": (b"{}", 10, "from 0 to 2"),
    "not an object": (b"[1, 2]", None, "must be a JSON object.*got a JSON array"),
    "no inputs": (b"{}", None, 'non-empty "inputs" list, got nothing'),
    "empty inputs": (json_request([]), None, 'non-empty "inputs" list'),
    "inputs not a list": (b'{"inputs": {"x": 1}}', None, 'non-empty "inputs" list, got object'),
    "input not an object": (json_request([5]), None, r"inputs\[0\] must be an object"),
    "missing name": (json_request([{"shape": [1], "datatype": "FP32", "data": [1]}]), None, 'string "name", got None'),
    "name not a string": (json_request([fp32_input(name=3)]), None, 'string "name", got 3'),
    "missing shape": (json_request([{"name": "x", "datatype": "FP32", "data": [1]}]), None, "shape.*got None"),
    "negative dim": (json_request([fp32_input(shape=[-1])]), None, r"non-negative integers.*got \[-1\]"),
    "float dim": (json_request([fp32_input(shape=[2.0])]), None, "non-negative integers"),
    "bool dim": (json_request([fp32_input(shape=[True, 2])]), None, "non-negative integers"),
    "missing datatype": (json_request([{"name": "x", "shape": [1], "data": [1]}]), None, "datatype None, expected"),
    "unknown datatype": (json_request([fp32_input(datatype="FLOAT32")]), None, "'FLOAT32', expected one of BOOL"),
    "bytes datatype": (json_request([fp32_input(datatype="BYTES", data=["a", "b"])]), None, "cannot hold strings"),
    "no data": (json_request([{"name": "x", "shape": [1], "datatype": "FP32"}]), None, 'neither "data" nor'),
    "too few values": (json_request([fp32_input(data=[1.0])]), None, r"1 values in \"data\", but shape \[2\] needs 2"),
    "too many values": (json_request([fp32_input(data=[[1.0, 2], [3, 4]])]), None, "4 values"),
    "scalar for two": (json_request([fp32_input(data=1.0)]), None, "1 values"),
    "ragged data": (json_request([fp32_input(shape=[3], data=[[1.0, 2], [3]])]), None, "not a rectangular list"),
    "float into int32": (
        json_request([fp32_input(datatype="INT32", data=[1, 2.5])]),
        None,
        'INT32, but its "data" holds floats. Send whole numbers',
    ),
    "int beyond 64 bits into int64": (
        b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [18446744073709551616]}]}',
        None,
        "holds floats.*beyond 64 bits",
    ),
    "float among big uint64": (
        json_request([fp32_input(datatype="UINT64", data=[1.5, 2**64 - 1])]),
        None,
        'UINT64, but its "data" holds floats',
    ),
    "negative among big uint64": (
        json_request([fp32_input(datatype="UINT64", data=[-1, 2**64 - 1])]),
        None,
        'UINT64, but its "data" holds floats.*range',
    ),
    "out of range uint8": (
        json_request([fp32_input(datatype="UINT8", data=[-1, 300])]),
        None,
        r"\[0, 255\].*from -1 to 300",
    ),
    "out of range int8": (json_request([fp32_input(datatype="INT8", data=[127, 128])]), None, r"\[-128, 127\]"),
    "fp16 overflow": (json_request([fp32_input(datatype="FP16", data=[1.0, 1e6])]), None, "largest finite value"),
    "fp32 overflow": (json_request([fp32_input(data=[1.0, 1e300])]), None, "largest finite value"),
    "strings into fp32": (json_request([fp32_input(data=["1", "2"])]), None, 'FP32, but its "data" holds strings'),
    "nulls into fp32": (json_request([fp32_input(data=[None, 1.0])]), None, "holds nulls or objects"),
    "bools into fp32": (json_request([fp32_input(data=[True, False])]), None, "holds booleans"),
    "bools into int32": (json_request([fp32_input(datatype="INT32", data=[True, False])]), None, "holds booleans"),
    "ints into bool": (json_request([fp32_input(datatype="BOOL", data=[0, 1])]), None, "true/false"),
    "duplicate input": (json_request([fp32_input(), fp32_input()]), None, "'x' appears twice"),
    "input parameters not an object": (json_request([fp32_input(parameters=[])]), None, '"parameters" must be a JSON'),
    "shared memory input": (
        json_request([fp32_input(parameters={"shared_memory_region": "r"})]),
        None,
        "shared-memory extension is not supported",
    ),
    "id not a string": (json_request([fp32_input()], id=5), None, '"id" must be a string, got number 5'),
    "parameters not an object": (json_request([fp32_input()], parameters="x"), None, "must be a JSON object"),
    "binary_data_output not bool": (
        json_request([fp32_input()], parameters={"binary_data_output": "yes"}),
        None,
        '"binary_data_output" must be true or false',
    ),
    "outputs not a list": (json_request([fp32_input()], outputs={"name": "y"}), None, '"outputs" must be a list'),
    "output not an object": (json_request([fp32_input()], outputs=["y"]), None, r"outputs\[0\] must be an object"),
    "output without name": (json_request([fp32_input()], outputs=[{}]), None, r"outputs\[0\] needs a non-empty"),
    "output binary_data not bool": (
        json_request([fp32_input()], outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
        None,
        '"binary_data" must be true or false',
    ),
    "duplicate output": (json_request([fp32_input()], outputs=[{"name": "y"}, {"name": "y"}]), None, "twice"),
    "classification": (
        json_request([fp32_input()], outputs=[{"name": "y", "parameters": {"classification": 3}}]),
        None,
        "classification extension is not supported",
    ),
    "binary size mismatch": (*binary_fp32(4), r"binary_data_size 4, but shape \[2\] of FP32 needs 2 elements x 4"),
    "binary size not int": (*binary_fp32("8"), "binary_data_size '8'"),
    "binary size beyond tail": (*binary_fp32(8, b"\x00" * 4), "only 4 bytes of binary data are left"),
    "leftover bytes": (*binary_fp32(8, b"\x00" * 12), "4 bytes after the JSON header that no input claims"),
    "leftover bytes with json input": (
        json_request([fp32_input()]) + b"xx",
        len(json_request([fp32_input()])),
        "2 bytes",
    ),
    "data and binary": (*binary_fp32(8, with_data=True), 'both "data" and parameters.binary_data_size'),
    "bool byte not 0 or 1": (*binary_fp32(2, b"\x01\x02", datatype="BOOL"), "0 or 1; got a byte of value 2"),
}


@pytest.mark.parametrize(("body", "header_length", "message"), list(ERRORS.values()), ids=list(ERRORS))
def test_bad_requests_raise_input_error_that_says_what_to_do(
    body: bytes, header_length: int | None, message: str
) -> None:
    with pytest.raises(InputError, match=message) as caught:
        parse_infer_request(body, header_length)
    assert caught.value.http_status == 400
    assert len(caught.value.message) > 40
