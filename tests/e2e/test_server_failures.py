"""Every way a request can go wrong, on every protocol it applies to, against real servers.

Three ``torchferry serve`` subprocesses: ``main`` (iris, bag and the python-mode probe, with a
10 KiB body limit and an API token), ``overload`` (the probe with ``--queue-size 1``) and
``deadline`` (the probe with ``--timeout-ms 100``). The probe raises when a row's first value
is below -100 and sleeps for its fourth value in seconds, so 429, 500 and 504 happen on cue.
Each error must be JSON ``{"error", "type"[, "error_id"]}`` with the right status, a message
that says what was expected, and the server must keep serving afterwards.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.serving_helpers import (
    FAIL_VALUE,
    Archives,
    Reply,
    Server,
    assert_error,
    multipart,
    oip_json_request,
    oip_output,
    png_bytes,
    probe_rows,
    run_concurrently,
    running_server,
    session_archives,
)

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_utils = pytest.importorskip("tritonclient.utils")

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "s3cret-token"  # noqa: S105 - the test server's token
PROTOCOLS = ("v2", "v1", "simple")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    return session_archives(tmp_path_factory)


@pytest.fixture(scope="module")
def main(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [archives.iris, archives.bag, archives.image, archives.probe, "--trust-code", "--torch-threads", "1"]
    args += ["--max-body-mb", "0.01", "--api-token", TOKEN, "--max-delay-ms", "20"]
    with running_server(args, tmp_path_factory.mktemp("failures-main")) as server:
        yield server


@pytest.fixture(scope="module")
def overload(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [archives.probe, "--trust-code", "--queue-size", "1", "--torch-threads", "1"]
    with running_server(args, tmp_path_factory.mktemp("failures-429")) as server:
        yield server


@pytest.fixture(scope="module")
def deadline(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [archives.probe, "--trust-code", "--timeout-ms", "100", "--torch-threads", "1"]
    with running_server(args, tmp_path_factory.mktemp("failures-504")) as server:
        yield server


def send(server: Server, protocol: str, model: str, payload: Any, *, name: str = "input", **kwargs: Any) -> Reply:
    """``payload`` rows (a tensor) or a prepared body, on the given protocol."""
    if isinstance(payload, torch.Tensor):
        if protocol == "v2":
            payload = oip_json_request(name, payload)
        elif protocol == "v1":
            payload = {"instances": payload.tolist()}
        else:
            payload = {"inputs": payload.tolist()}
    path = {"v2": f"/v2/models/{model}/infer", "v1": f"/v1/models/{model}:predict", "simple": f"/predict/{model}"}
    return server.post(path[protocol], payload, **kwargs)


def values(count: int) -> list[float]:
    return [float(i) for i in range(count)]


def wait_until_idle(server: Server, model: str = "probe", timeout_s: float = 15.0) -> None:
    """Until a fast request on ``model`` succeeds (the slow ones ahead of it are done)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if send(server, "simple", model, probe_rows(1)).status == 200:
            return
        time.sleep(0.1)
    raise AssertionError(f"{model} did not become idle in {timeout_s} s")


# ------------------------------------------------------------------------------ 400: bad request data


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("body", [b'{"inputs": [[1, 2', b"", b"\xff\xfe", b'{"inputs": [[NaN, 1, 2, 3]]}'])
def test_malformed_json_is_400(main: Server, protocol: str, body: bytes) -> None:
    reply = send(main, protocol, "iris", body, headers={"Content-Type": "application/json", "X-Request-ID": "bad-1"})
    error = assert_error(reply, 400, "InputError")
    assert "JSON" in error["error"] or "empty" in error["error"]
    assert reply.headers["x-request-id"] == "bad-1"
    assert "total" in reply.timing()


def test_wrong_input_name_is_400(main: Server) -> None:
    rows = [[1.0, 2.0, 3.0, 4.0]]
    v2 = main.post(
        "/v2/models/iris/infer", {"inputs": [{"name": "wrong", "shape": [1, 4], "datatype": "FP32", "data": rows}]}
    )
    assert_error(v2, 400, "InputError", "['input']", "['wrong']")
    v1 = main.post("/v1/models/bag:predict", {"instances": [{"ids": [1, 2, 3, 4, 5], "scael": [1.0]}]})
    assert_error(v1, 400, "InputError", "['ids', 'scale']", "missing ['scale']")
    simple = main.post("/predict/iris", {"inputs": {"wrong": rows}})
    assert_error(simple, 400, "InputError", "expected ['input']", "got ['wrong']")
    two_inputs_bare = main.post("/predict/bag", {"inputs": [[1, 2, 3, 4, 5]]})
    assert_error(two_inputs_bare, 400, "InputError", "['ids', 'scale']")


def test_wrong_dtype_is_400(main: Server) -> None:
    v2 = main.post(
        "/v2/models/bag/infer",
        {
            "inputs": [
                {"name": "ids", "shape": [1, 5], "datatype": "FP32", "data": [1.5, 2, 3, 4, 5]},
                {"name": "scale", "shape": [1, 1], "datatype": "FP64", "data": [1.0]},
            ]
        },
    )
    assert_error(v2, 400, "InputError", "int64", "float32")
    floats = {"ids": [[1.5, 2, 3, 4, 5]], "scale": [[1.0]]}
    assert_error(main.post("/v1/models/bag:predict", {"inputs": floats}), 400, "InputError", "int64", "float")
    assert_error(main.post("/predict/bag", {"inputs": floats}), 400, "InputError", "int64", "float")
    strings = main.post("/predict/iris", {"inputs": [["a", "b", "c", "d"]]})
    assert_error(strings, 400, "InputError", "float32[?,4]")
    as_bytes = main.post(
        "/v2/models/iris/infer", {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]}
    )
    assert_error(as_bytes, 400, "InputError", "BYTES")
    unknown = main.post(
        "/v2/models/iris/infer",
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP128", "data": values(4)}]},
    )
    assert_error(unknown, 400, "InputError", "FP128", "FP32")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_shape_is_400_with_expected_and_got(main: Server, protocol: str) -> None:
    reply = send(main, protocol, "iris", torch.ones(2, 5))
    assert_error(reply, 400, "InputError", "[?,4]", "[2, 5]")


def test_oip_request_structure_errors_are_400(main: Server) -> None:
    base = {"name": "input", "shape": [2, 4], "datatype": "FP32"}
    cases: list[tuple[dict[str, Any], tuple[str, ...]]] = [
        ({"inputs": [base | {"data": values(4)}]}, ("4 values", "[2, 4] needs 8")),
        ({"inputs": [base | {"shape": [2, -4], "data": values(8)}]}, ("non-negative",)),
        ({"inputs": []}, ('non-empty "inputs"',)),
        ({}, ('"inputs"',)),
        ({"inputs": [base | {"data": values(8)}], "outputs": [{"name": "nope"}]}, ("no output 'nope'", "['output']")),
        ({"inputs": [base | {"data": values(8)}, base | {"data": values(8)}]}, ("twice",)),
        ({"inputs": [base | {"data": [True] * 8}]}, ("booleans",)),
        ({"inputs": [base]}, ('neither "data"',)),
        ({"inputs": [base | {"data": values(8)}], "id": 7}, ('"id" must be a string',)),
    ]
    for body, fragments in cases:
        assert_error(main.post("/v2/models/iris/infer", body), 400, "InputError", *fragments)


def test_tritonclient_sees_the_400_message(main: Server) -> None:
    client = tritonclient_http.InferenceServerClient(main.address, network_timeout=30)
    try:
        data = tritonclient_http.InferInput("input", [1, 5], "FP32")
        data.set_data_from_numpy(np.ones((1, 5), dtype=np.float32))
        with pytest.raises(tritonclient_utils.InferenceServerException) as info:
            client.infer("iris", [data])
        assert info.value.status() == "400"
        assert "expected shape [?,4], got [1, 5]" in info.value.message()
        with pytest.raises(tritonclient_utils.InferenceServerException) as missing:
            client.infer("nope", [data])
        assert missing.value.status() == "404" and "iris (versions 1)" in missing.value.message()
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_with_different_batch_sizes_are_400(main: Server, protocol: str) -> None:
    ids, scale = [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], [[1.0], [2.0], [3.0]]
    if protocol == "v2":
        body: dict[str, Any] = {
            "inputs": [
                {"name": "ids", "shape": [2, 5], "datatype": "INT64", "data": ids},
                {"name": "scale", "shape": [3, 1], "datatype": "FP64", "data": scale},
            ]
        }
    else:
        body = {"inputs": {"ids": ids, "scale": scale}}
    assert_error(send(main, protocol, "bag", body), 400, "InputError", "batch")


@pytest.mark.parametrize("protocol", ["v2", "simple"])
def test_inputs_with_batch_one_and_two_are_not_broadcast(main: Server, protocol: str) -> None:
    ids, scale = [[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], [[1.0]]
    if protocol == "v2":
        body: dict[str, Any] = {
            "inputs": [
                {"name": "ids", "shape": [2, 5], "datatype": "INT64", "data": ids},
                {"name": "scale", "shape": [1, 1], "datatype": "FP64", "data": scale},
            ]
        }
    else:
        body = {"inputs": {"ids": ids, "scale": scale}}
    assert_error(send(main, protocol, "bag", body), 400, "InputError")


def test_bad_uploads_are_400(main: Server) -> None:
    raw = main.post("/predict/img", b"definitely not a png", headers={"Content-Type": "image/png"})
    assert_error(raw, 400, "InputError", "could not be decoded")
    body, content_type = multipart("x", "notes.txt", b"plain text", "text/plain")
    form = main.post("/predict/img", body, headers={"Content-Type": content_type})
    assert_error(form, 400, "InputError", "could not be decoded")
    boundary = "----nofile"
    no_file = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\nhello\r\n--{boundary}--\r\n'.encode()
    reply = main.post("/predict/img", no_file, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_error(reply, 400, "InputError", "no file field", "'x'")
    truncated = png_bytes(np.zeros((12, 12, 3), dtype=np.uint8))[:40]
    assert_error(main.post("/predict/img", truncated, headers={"Content-Type": "image/png"}), 400, "InputError")


# ------------------------------------------------------------------------------ 400: malformed binary tensors


def binary_request(
    header: dict[str, Any], tail: bytes, *, header_length: int | None = None
) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    length = len(encoded) if header_length is None else header_length
    headers = {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"}
    return encoded + tail, headers


def test_valid_binary_request_as_a_control(main: Server, archives: Archives) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    header = {
        "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]
    }
    body, headers = binary_request(header, x.tobytes())
    reply = main.post("/v2/models/iris/infer", body, headers=headers)
    assert reply.status == 200, reply.text
    with torch.no_grad():
        expected = archives.iris_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(oip_output(reply), expected, rtol=1e-5, atol=1e-6)


def test_malformed_binary_requests_are_400(main: Server) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4).tobytes()

    def header(size: Any = 32, shape: list[int] | None = None) -> dict[str, Any]:
        spec = {"name": "input", "shape": shape or [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}
        return {"inputs": [spec]}

    encoded_length = len(json.dumps(header()).encode())
    cases = [
        (
            binary_request(header(), x, header_length=encoded_length + len(x) + 100),
            ("Inference-Header-Content-Length",),
        ),
        (binary_request(header(), x, header_length=-1), ("Inference-Header-Content-Length",)),
        (binary_request(header(), x, header_length=10), ("not valid JSON",)),
        (binary_request(header(size=24), x), ("binary_data_size 24", "32 bytes")),
        (binary_request(header(size="32"), x), ("binary_data_size",)),
        (binary_request(header(), x[:20]), ("binary_data_size 32", "20 bytes")),
        (binary_request(header(), x + b"\0" * 8), ("8 bytes after the JSON header",)),
        (binary_request(header(size=16, shape=[1, 4]), x), ("16 bytes after",)),
    ]
    for (body, headers), fragments in cases:
        assert_error(main.post("/v2/models/iris/infer", body, headers=headers), 400, "InputError", *fragments)
    not_a_number = main.post("/v2/models/iris/infer", x, headers={"Inference-Header-Content-Length": "abc"})
    assert_error(not_a_number, 400, "InputError", "must be an integer")
    raw_wrong_size = main.post("/v2/models/iris/infer", x[:12], headers={"Inference-Header-Content-Length": "0"})
    assert_error(raw_wrong_size, 400, "InputError", "12 bytes", "needs 16")
    raw_two_inputs = main.post("/v2/models/bag/infer", x, headers={"Inference-Header-Content-Length": "0"})
    assert_error(raw_two_inputs, 400, "InputError", "one-input model")


# ------------------------------------------------------------------------------ 404


def test_unknown_model_is_404_listing_what_is_loaded(main: Server) -> None:
    loaded = "bag (versions 1), img (versions 1), iris (versions 1), probe (versions 1)"
    for reply in (
        send(main, "v2", "nope", torch.ones(1, 4)),
        send(main, "v1", "nope", torch.ones(1, 4)),
        send(main, "simple", "nope", torch.ones(1, 4)),
        main.get("/v2/models/nope"),
        main.get("/v2/models/nope/ready"),
        main.get("/v2/models/nope/config"),
        main.get("/v1/models/nope"),
    ):
        assert_error(reply, 404, "NotFoundError", "'nope'", loaded)


def test_statistics_of_an_unknown_model_is_404(main: Server) -> None:
    assert_error(main.get("/v2/models/nope/stats"), 404, "NotFoundError", "'nope'")


def test_unknown_version_is_404_listing_loaded_versions(main: Server) -> None:
    rows_json = oip_json_request("input", torch.ones(1, 4))
    for reply in (
        main.post("/v2/models/iris/versions/9/infer", rows_json),
        main.post("/predict/iris/versions/9", {"inputs": [[1.0, 2.0, 3.0, 4.0]]}),
        main.get("/v2/models/iris/versions/9"),
        main.get("/v2/models/iris/versions/9/ready"),
        main.get("/v2/models/iris/versions/9/config"),
        main.get("/v2/models/iris/versions/9/stats"),
    ):
        assert_error(reply, 404, "NotFoundError", "'9'", "['1']")


def test_unknown_endpoint_and_method_are_json_errors(main: Server) -> None:
    missing = assert_error(main.get("/v3/nothing"), 404, None, "/v3/nothing", "/docs")
    assert "x-request-id" in main.get("/v3/nothing").headers
    wrong_method = assert_error(main.request("DELETE", "/v2/models/iris/infer"), 405, None, "DELETE")
    assert missing and wrong_method


def test_unknown_endpoint_error_has_a_type(main: Server) -> None:
    assert "type" in main.get("/v3/nothing").json()
    assert "type" in main.request("DELETE", "/v2/models/iris/infer").json()


# ------------------------------------------------------------------------------ 413


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_body_over_the_limit_is_413(main: Server, protocol: str) -> None:
    big = torch.ones(600, 4)  # ~13 KB of JSON against a 0.01 MiB (10485-byte) limit
    reply = send(main, protocol, "iris", big)
    assert_error(reply, 413, "PayloadTooLargeError", "limit of 10.24 KiB", "--max-body-mb")  # 0.01 MiB
    assert main.get("/v2/health/live").status == 200


def test_body_under_the_limit_passes_and_chunked_over_it_is_413(main: Server) -> None:
    padded = b'{"inputs": [[1, 2, 3, 4]]}' + b" " * 9000
    assert main.post("/predict/iris", padded, headers={"Content-Type": "application/json"}).status == 200
    chunks = iter([b'{"inputs": [[1, 2, 3, 4]]}', b" " * 6000, b" " * 6000])  # no Content-Length: chunked
    reply = main.post("/predict/iris", chunks, headers={"Content-Type": "application/json"})
    assert_error(reply, 413, "PayloadTooLargeError")
    lying = main.post("/v2/models/iris/infer", b"{}", headers={"Content-Length": "999999999"}, timeout=10)
    assert_error(lying, 413, "PayloadTooLargeError")


# ------------------------------------------------------------------------------ 401


def test_management_needs_the_token(main: Server) -> None:
    routes = [
        "/v2/repository/index",
        "/v2/repository/models/iris/load",
        "/v2/repository/models/iris/unload",
        "/v2/repository/models/iris/versions/1/default",
    ]
    for path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            reply = main.post(path, {"parameters": {}}, headers=headers)
            assert_error(reply, 401, "UnauthorizedError", "Authorization: Bearer")
    # nothing was unloaded by the refused requests; the right token works; inference needs none
    index = main.post("/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"})
    assert index.status == 200
    assert {(e["name"], e["version"], e["state"]) for e in index.json()} == {
        ("iris", "1", "READY"),
        ("bag", "1", "READY"),
        ("img", "1", "READY"),
        ("probe", "1", "READY"),
    }
    assert main.post("/predict/iris", {"inputs": [[1, 2, 3, 4]]}).status == 200


# ------------------------------------------------------------------------------ 500


def test_a_raising_model_fails_only_its_own_request(main: Server, archives: Archives) -> None:
    """A slow request occupies the model; a bad and a good request then queue and run as one batch:
    the bad one gets 500 with an error id, the good one its answer, and the server goes on."""
    before = main.get("/v2/models/probe/stats").json()["model_stats"][0]["inference_stats"]
    blocker = probe_rows(1, delay=0.5, seed=1)
    bad = probe_rows(1, seed=2)
    bad[0, 0] = FAIL_VALUE
    good = probe_rows(1, seed=3)
    results: dict[str, Reply] = {}
    blocking = threading.Thread(target=lambda: results.update(blocker=send(main, "v2", "probe", blocker, name="x")))
    blocking.start()
    time.sleep(0.2)  # the blocker is in the model now; the next two wait together
    bad_reply, good_reply = run_concurrently(
        [lambda: send(main, "v2", "probe", bad, name="x"), lambda: send(main, "v2", "probe", good, name="x")]
    )
    blocking.join(30)
    assert results["blocker"].status == 200

    error = assert_error(bad_reply, 500, "ModelFailedError", "raised while running this request")
    assert re.fullmatch(r"[0-9a-f]{12}", error["error_id"]) and error["error_id"] in error["error"]
    assert good_reply.status == 200, good_reply.text
    np.testing.assert_allclose(oip_output(good_reply), archives.probe_eager(good).numpy(), rtol=1e-5, atol=1e-6)

    assert main.get("/v2/health/live").status == 200 and main.get("/v2/health/ready").status == 200
    assert send(main, "v2", "probe", probe_rows(2), name="x").status == 200
    after = main.get("/v2/models/probe/stats").json()["model_stats"][0]["inference_stats"]
    assert after["fail"]["count"] - before["fail"]["count"] == 1
    assert after["success"]["count"] - before["success"]["count"] == 3
    deadline_s = time.monotonic() + 5
    while error["error_id"] not in main.log() and time.monotonic() < deadline_s:
        time.sleep(0.05)
    assert error["error_id"] in main.log() and "probe: a row asked this model to fail" in main.log()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_raising_model_is_500_with_error_id_on_every_protocol(main: Server, protocol: str) -> None:
    before = main.metrics().total("torchferry_requests_total", model="probe", protocol=protocol, status="500")
    bad = probe_rows(2, seed=4)
    bad[1, 0] = FAIL_VALUE
    reply = send(main, protocol, "probe", bad, name="x")
    error = assert_error(reply, 500, "ModelFailedError")
    assert re.fullmatch(r"[0-9a-f]{12}", error["error_id"])
    assert send(main, protocol, "probe", probe_rows(2, seed=5), name="x").status == 200
    after = main.metrics().total("torchferry_requests_total", model="probe", protocol=protocol, status="500")
    assert after - before == 1


# ------------------------------------------------------------------------------ 504


def test_request_level_oip_timeout_is_504(main: Server) -> None:
    body = oip_json_request("x", probe_rows(1, delay=0.5)) | {"parameters": {"timeout": 100_000}}  # µs
    start = time.monotonic()
    reply = main.post("/v2/models/probe/infer", body)
    assert_error(reply, 504, "DeadlineExceededError", "deadline")
    assert time.monotonic() - start < 0.45
    wait_until_idle(main)
    client = tritonclient_http.InferenceServerClient(main.address, network_timeout=30)
    try:  # tritonclient's own timeout argument is the same request parameter
        data = tritonclient_http.InferInput("x", [1, 4], "FP32")
        data.set_data_from_numpy(probe_rows(1, delay=0.5).numpy())
        with pytest.raises(tritonclient_utils.InferenceServerException) as info:
            client.infer("probe", [data], timeout=100_000)
        assert info.value.status() == "504" and "deadline" in info.value.message()
    finally:
        client.close()
    wait_until_idle(main)


def test_tritonclient_compressed_request_is_served_or_clearly_refused(main: Server, archives: Archives) -> None:
    client = tritonclient_http.InferenceServerClient(main.address, network_timeout=30)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    try:
        data = tritonclient_http.InferInput("input", [2, 4], "FP32")
        data.set_data_from_numpy(x)
        try:
            result = client.infer("iris", [data], request_compression_algorithm="gzip")
        except tritonclient_utils.InferenceServerException as error:  # a clear refusal is acceptable too
            assert error.status() in ("400", "415") and "gzip" in error.message().lower(), error.message()
        else:
            with torch.no_grad():
                expected = archives.iris_model(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(result.as_numpy("output"), expected, rtol=1e-5, atol=1e-6)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_past_the_server_deadline_is_504(deadline: Server, protocol: str) -> None:
    wait_until_idle(deadline)
    before = deadline.metrics().total("torchferry_requests_total", model="probe", protocol=protocol, status="504")
    start = time.monotonic()
    reply = send(deadline, protocol, "probe", probe_rows(1, delay=0.8), name="x")
    elapsed = time.monotonic() - start
    assert_error(reply, 504, "DeadlineExceededError", "--timeout-ms")
    assert elapsed < 0.7, f"the 504 came after {elapsed:.2f} s, not soon after the 100 ms deadline"
    # a fast request queued behind the still-running slow one also misses its deadline
    queued = send(deadline, protocol, "probe", probe_rows(1), name="x")
    assert_error(queued, 504, "DeadlineExceededError")
    after = deadline.metrics().total("torchferry_requests_total", model="probe", protocol=protocol, status="504")
    assert after - before == 2
    wait_until_idle(deadline)
    assert send(deadline, protocol, "probe", probe_rows(1), name="x").status == 200


# ------------------------------------------------------------------------------ 429


def test_full_queue_is_429_with_retry_after_on_every_protocol(overload: Server, archives: Archives) -> None:
    """One slow request runs, one waits (the queue holds 1): every further request is refused at once."""
    slow = [probe_rows(1, delay=1.5, seed=20), probe_rows(1, delay=1.5, seed=21)]
    answers: list[Reply] = []
    threads = [threading.Thread(target=lambda r=r: answers.append(send(overload, "simple", "probe", r))) for r in slow]
    for thread in threads:
        thread.start()
        time.sleep(0.3)
    end = time.monotonic() + 5
    while overload.metrics().total("torchferry_queue_depth", model="probe") < 1 and time.monotonic() < end:
        time.sleep(0.05)  # until the second slow request waits in the queue
    assert not answers, [a.text for a in answers]  # neither slow request was refused or answered yet
    refused: list[Reply] = []
    for protocol in PROTOCOLS:
        start = time.monotonic()
        refused.append(send(overload, protocol, "probe", probe_rows(1), name="x"))
        assert time.monotonic() - start < 1.0  # refused at once, not after waiting
    burst = run_concurrently([lambda: send(overload, "v2", "probe", probe_rows(1), name="x") for _ in range(4)])
    for reply in refused + burst:
        assert_error(reply, 429, "OverloadedError", "queued", "--queue-size")
        assert int(reply.headers["retry-after"]) >= 1
    for thread in threads:
        thread.join(30)
    assert [a.status for a in answers] == [200, 200], [a.text for a in answers]
    wait_until_idle(overload)
    metrics = overload.metrics()
    for protocol in PROTOCOLS:
        assert metrics.total("torchferry_requests_total", model="probe", protocol=protocol, status="429") >= 1


def test_queue_limit_applies_per_request_not_per_row(overload: Server, archives: Archives) -> None:
    wait_until_idle(overload)
    many_rows = probe_rows(50, seed=30)
    reply = send(overload, "v2", "probe", many_rows, name="x")
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(oip_output(reply), archives.probe_eager(many_rows).numpy(), rtol=1e-5, atol=1e-6)
