"""``torchferry serve`` speaks every protocol it advertises, to real clients over real sockets.

One server (a subprocess on 127.0.0.1) serves four archives: ``iris`` (an exported MLP with
labels), ``bag`` (INT64 and FP64 inputs, two named outputs), ``img`` (an exported CNN with
image pre-processing and a Classify step) and ``probe`` (mode="python", slow on request).
Outputs are compared element-wise with the eager modules the archives were packed from.
``tritonclient.http`` is the external Open Inference Protocol client; KServe v1, the simple
JSON endpoint, uploads, /docs, /openapi.json and /metrics are exercised over raw HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from tests.serving_helpers import (
    IMAGE_LABELS,
    IRIS_LABELS,
    Archives,
    Server,
    image_reference,
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

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MAX_BATCH = 16
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    return session_archives(tmp_path_factory)


@pytest.fixture(scope="module")
def server(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [archives.iris, archives.bag, archives.image, archives.probe, "--trust-code", "--torch-threads", "1"]
    args += ["--max-batch-size", str(MAX_BATCH), "--max-delay-ms", "5"]
    with running_server(args, tmp_path_factory.mktemp("protocols")) as running:
        print(f"\nserver ready in {running.started_s:.2f} s (archives packed in {archives.pack_seconds:.2f} s)")
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[Any]:
    triton = tritonclient_http.InferenceServerClient(server.address, connection_timeout=30, network_timeout=30)
    try:
        yield triton
    finally:
        triton.close()


def eager(model: torch.nn.Module, *inputs: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(*inputs)


# ------------------------------------------------------------------------------ Open Inference Protocol


def test_tritonclient_health_and_server_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    for name in ("iris", "bag", "img", "probe"):
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, "1")
    assert not client.is_model_ready("no-such-model")
    assert not client.is_model_ready("iris", "9")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "torchferry"
    assert {"binary_tensor_data", "model_configuration", "statistics"} <= set(metadata["extensions"])


def test_tritonclient_model_metadata_and_config(client: Any) -> None:
    iris = client.get_model_metadata("iris")
    assert iris["name"] == "iris" and iris["versions"] == ["1"] and iris["platform"] == "torchferry"
    assert iris["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert iris["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]}]
    bag = client.get_model_metadata("bag", "1")
    assert bag["inputs"] == [
        {"name": "ids", "datatype": "INT64", "shape": [-1, 5]},
        {"name": "scale", "datatype": "FP64", "shape": [-1, 1]},
    ]
    assert {o["name"]: o["datatype"] for o in bag["outputs"]} == {"vec": "FP64", "total": "INT64"}

    config = client.get_model_config("iris")
    assert config["name"] == "iris" and config["max_batch_size"] == MAX_BATCH
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["output"] == [{"name": "output", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    bag_config = client.get_model_config("bag", "1")
    assert [i["data_type"] for i in bag_config["input"]] == ["TYPE_INT64", "TYPE_FP64"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_matches_eager(client: Any, archives: Archives, binary: bool) -> None:
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    expected = eager(archives.iris_model, x).numpy()
    for version in ("", "1"):
        data = tritonclient_http.InferInput("input", list(x.shape), "FP32")
        data.set_data_from_numpy(x.numpy(), binary_data=binary)
        wanted = tritonclient_http.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("iris", [data], model_version=version, outputs=[wanted], request_id="req-7")
        got = result.as_numpy("output")
        assert got.dtype == np.float32 and got.shape == (5, 3)
        np.testing.assert_allclose(got, expected, **TOL)
        response = result.get_response()
        assert response["model_name"] == "iris" and response["model_version"] == "1" and response["id"] == "req-7"
        assert set(response["parameters"]) == {"queue_ms", "infer_ms", "batch_size"}
        assert response["parameters"]["batch_size"] >= 5
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary
    every_output = client.infer("iris", [data])  # no outputs named: all of them, binary (tritonclient's default)
    np.testing.assert_allclose(every_output.as_numpy("output"), expected, **TOL)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_int64_and_fp64_inputs_and_two_outputs(client: Any, archives: Archives, binary: bool) -> None:
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 10, (3, 5), generator=generator)
    scale = torch.rand(3, 1, generator=generator, dtype=torch.float64)
    expected = eager(archives.bag_model, ids, scale)
    inputs = [
        tritonclient_http.InferInput("ids", [3, 5], "INT64"),
        tritonclient_http.InferInput("scale", [3, 1], "FP64"),
    ]
    inputs[0].set_data_from_numpy(ids.numpy(), binary_data=binary)
    inputs[1].set_data_from_numpy(scale.numpy(), binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in ("vec", "total")]
    result = client.infer("bag", inputs, outputs=outputs)
    total = result.as_numpy("total")
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, expected["total"].numpy())
    vec = result.as_numpy("vec")
    assert vec.dtype == np.float64
    np.testing.assert_allclose(vec, expected["vec"].numpy(), rtol=1e-12, atol=1e-12)
    only_total = client.infer("bag", inputs, outputs=[tritonclient_http.InferRequestedOutput("total", binary)])
    assert only_total.as_numpy("vec") is None
    np.testing.assert_array_equal(only_total.as_numpy("total"), expected["total"].numpy())


def test_tritonclient_statistics_count_requests(client: Any) -> None:
    def counts() -> tuple[int, int, int]:
        (stats,) = client.get_inference_statistics("iris")["model_stats"]
        return (
            int(stats["inference_stats"]["success"]["count"]),
            int(stats.get("inference_count", 0)),
            int(stats.get("execution_count", 0)),
        )

    before = counts()
    data = tritonclient_http.InferInput("input", [2, 4], "FP32")
    data.set_data_from_numpy(np.ones((2, 4), dtype=np.float32))
    for _ in range(3):
        client.infer("iris", [data])
    after = counts()
    assert after[0] - before[0] == 3
    assert after[1] - before[1] == 6  # rows
    assert 1 <= after[2] - before[2] <= 3  # forward passes
    versioned = client.get_inference_statistics("iris", "1")["model_stats"]
    assert versioned[0]["version"] == "1" and int(versioned[0]["inference_stats"]["success"]["count"]) >= after[0]


def test_tritonclient_statistics_of_every_model(client: Any) -> None:
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"iris", "bag", "img", "probe"}


def test_version_endpoints_over_http(server: Server, archives: Archives) -> None:
    assert server.get("/v2/models/iris/versions/1").json()["name"] == "iris"
    assert server.get("/v2/models/iris/versions/1/ready").json() == {"name": "iris", "ready": True}
    assert server.get("/v2/models/iris/versions/1/config").json()["max_batch_size"] == MAX_BATCH
    assert server.get("/v2/models/iris/versions/1/stats").json()["model_stats"][0]["version"] == "1"
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(5))
    reply = server.post("/v2/models/iris/versions/1/infer", oip_json_request("input", x))
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(oip_output(reply), eager(archives.iris_model, x).numpy(), **TOL)


def test_oip_json_response_headers_and_parameters(server: Server) -> None:
    body = oip_json_request("input", np.ones((2, 4), dtype=np.float32)) | {"id": "abc"}
    reply = server.post("/v2/models/iris/infer", body, headers={"X-Request-ID": "my-req-42"})
    assert reply.status == 200, reply.text
    assert reply.headers["x-request-id"] == "my-req-42"
    timing = reply.timing()
    assert {"queue", "infer", "batch", "total"} <= set(timing)
    assert float(timing["total"]["dur"]) >= float(timing["infer"]["dur"]) >= 0
    doc = reply.json()
    assert doc["id"] == "abc" and doc["model_version"] == "1"
    assert doc["parameters"]["batch_size"] == reply.batch_size() >= 2
    assert "x-request-id" in server.get("/v2/health/live").headers


def test_raw_binary_request_with_header_length_zero(server: Server, archives: Archives) -> None:
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    reply = server.post(
        "/v2/models/iris/infer",
        x.tobytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert reply.status == 200, reply.text
    header_length = int(reply.headers["inference-header-content-length"])
    header = json.loads(reply.body[:header_length])
    (output,) = header["outputs"]
    got = np.frombuffer(reply.body[header_length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_allclose(got, eager(archives.iris_model, torch.from_numpy(x)).numpy(), **TOL)


# ------------------------------------------------------------------------------ KServe v1


def test_kserve_v1_list_ready_predict(server: Server, archives: Archives) -> None:
    assert set(server.get("/v1/models").json()["models"]) == {"iris", "bag", "img", "probe"}
    assert server.get("/v1/models/iris").json() == {"name": "iris", "ready": True}
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(6))
    expected = eager(archives.iris_model, x).numpy()
    for key in ("instances", "inputs"):
        reply = server.post("/v1/models/iris:predict", {key: x.tolist()})
        assert reply.status == 200, reply.text
        np.testing.assert_allclose(np.asarray(reply.json()["predictions"]), expected, **TOL)
        assert reply.batch_size() >= 3


def test_kserve_v1_named_instances_for_two_inputs(server: Server, archives: Archives) -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5], [9, 9, 0, 0, 1]])
    scale = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    expected = eager(archives.bag_model, ids, scale)
    instances = [{"ids": ids[i].tolist(), "scale": scale[i].tolist()} for i in range(2)]
    reply = server.post("/v1/models/bag:predict", {"instances": instances})
    assert reply.status == 200, reply.text
    predictions = reply.json()["predictions"]
    assert [p["total"] for p in predictions] == expected["total"].tolist()
    np.testing.assert_allclose(np.asarray([p["vec"] for p in predictions]), expected["vec"].numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------ simple JSON and uploads


def test_simple_json_with_labels(server: Server, archives: Archives) -> None:
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    expected = eager(archives.iris_model, x)
    names = [IRIS_LABELS[i] for i in expected.argmax(-1).tolist()]
    for path, body in (
        ("/predict/iris", {"inputs": x.tolist()}),
        ("/predict/iris", x.tolist()),
        ("/predict/iris/versions/1", {"inputs": {"input": x.tolist()}}),
    ):
        reply = server.post(path, body)
        assert reply.status == 200, reply.text
        doc = reply.json()
        assert doc["model"] == "iris" and doc["version"] == "1"
        np.testing.assert_allclose(np.asarray(doc["outputs"]["output"]), expected.numpy(), **TOL)
        assert doc["labels"] == {"output": names}
        assert {"queue", "infer", "batch", "total"} <= set(reply.timing())
    single = server.post("/predict/iris", {"inputs": x[0].tolist()}).json()  # one sample, no batch dim
    np.testing.assert_allclose(np.asarray(single["outputs"]["output"]), expected[0].numpy(), **TOL)
    assert single["labels"] == {"output": names[0]}


def test_simple_json_two_inputs(server: Server, archives: Archives) -> None:
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    scale = torch.tensor([[3.0]], dtype=torch.float64)
    expected = eager(archives.bag_model, ids, scale)
    reply = server.post("/predict/bag", {"inputs": {"ids": ids.tolist(), "scale": scale.tolist()}})
    assert reply.status == 200, reply.text
    outputs = reply.json()["outputs"]
    assert outputs["total"] == expected["total"].tolist()
    np.testing.assert_allclose(np.asarray(outputs["vec"]), expected["vec"].numpy(), rtol=1e-12)
    assert "labels" not in reply.json()


def _assert_ranked(ranked: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    assert [r["label"] for r in ranked] == [label for label, _ in expected]
    assert [r["score"] for r in ranked] == pytest.approx([score for _, score in expected], rel=1e-5, abs=1e-6)


def test_image_upload_raw_body_and_multipart(server: Server, archives: Archives) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    png = png_bytes(array)
    expected = image_reference(array, archives.image_model)
    assert sorted(label for label, _ in expected) == sorted(IMAGE_LABELS)

    raw = server.post("/predict/img", png, headers={"Content-Type": "image/png"})
    assert raw.status == 200, raw.text
    _assert_ranked(raw.json()["outputs"]["output"], expected)

    body, content_type = multipart("x", "photo.png", png, "image/png")
    form = server.post("/predict/img", body, headers={"Content-Type": content_type})
    assert form.status == 200, form.text
    _assert_ranked(form.json()["outputs"]["output"], expected)
    assert form.json()["model"] == "img"


def test_image_model_still_takes_tensors_as_json(server: Server, archives: Archives) -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    reply = server.post("/v2/models/img/infer", oip_json_request("x", x))
    assert reply.status == 200, reply.text
    np.testing.assert_allclose(oip_output(reply), eager(archives.image_model, x).numpy(), **TOL)


# ------------------------------------------------------------------------------ docs and metrics


def test_docs_and_openapi_describe_each_model(server: Server) -> None:
    docs = server.get("/docs")
    assert docs.status == 200 and "swagger" in docs.text.lower()
    spec = server.get("/openapi.json").json()
    paths = spec["paths"]
    for name in ("iris", "bag", "img", "probe"):
        assert f"/predict/{name}" in paths and f"/v2/models/{name}/infer" in paths
    iris = paths["/predict/iris"]["post"]["requestBody"]["content"]["application/json"]
    assert "input" in iris["schema"]["properties"]["inputs"]["properties"]
    bag = paths["/predict/bag"]["post"]["requestBody"]["content"]["application/json"]
    assert set(bag["schema"]["properties"]["inputs"]["properties"]) == {"ids", "scale"}
    infer = paths["/v2/models/bag/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]
    assert [(i["name"], i["datatype"]) for i in infer["inputs"]] == [("ids", "INT64"), ("scale", "FP64")]
    assert "multipart/form-data" in paths["/predict/img"]["post"]["requestBody"]["content"]
    assert "Labels: setosa, versicolor, virginica" in paths["/predict/iris"]["post"]["description"]


def test_openapi_examples_work_as_sent(server: Server) -> None:
    spec = server.get("/openapi.json").json()["paths"]
    for name in ("iris", "bag"):
        example = spec[f"/predict/{name}"]["post"]["requestBody"]["content"]["application/json"]["example"]
        assert server.post(f"/predict/{name}", example).status == 200
        oip = spec[f"/v2/models/{name}/infer"]["post"]["requestBody"]["content"]["application/json"]["example"]
        assert server.post(f"/v2/models/{name}/infer", oip).status == 200


def test_metrics_count_requests_by_protocol(server: Server) -> None:
    before = server.metrics()
    x = [[1.0, 2.0, 3.0, 4.0]]
    for _ in range(2):
        assert server.post("/v2/models/iris/infer", oip_json_request("input", np.asarray(x, np.float32))).status == 200
        assert server.post("/v1/models/iris:predict", {"instances": x}).status == 200
        assert server.post("/predict/iris", {"inputs": x}).status == 200
    reply = server.get("/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    after = server.metrics()
    for protocol in ("v2", "v1", "simple"):
        labels = {"model": "iris", "version": "1", "protocol": protocol, "status": "200"}
        assert (
            after.total("torchferry_requests_total", **labels) - before.total("torchferry_requests_total", **labels)
            == 2
        )
        count = "torchferry_request_duration_seconds_count"
        seen = {"model": "iris", "version": "1", "protocol": protocol}
        assert after.total(count, **seen) - before.total(count, **seen) == 2
    expected = {
        "torchferry_queue_duration_seconds_count",
        "torchferry_inference_duration_seconds_count",
        "torchferry_batch_size_count",
        "torchferry_batch_size_bucket",
        "torchferry_queue_depth",
        "torchferry_model_load_seconds",
        "torchferry_model_loaded",
    }
    assert expected <= after.names()
    for name in ("iris", "bag", "img", "probe"):
        assert after.total("torchferry_model_loaded", model=name, version="1") == 1
        assert after.total("torchferry_model_load_seconds", model=name, version="1") > 0
    assert after.total("torchferry_queue_depth", model="iris") == 0
    # metadata, health and metrics requests are not inference requests
    assert not after.find("torchferry_requests_total", protocol="")


# ------------------------------------------------------------------------------ concurrency and batching


def _send(server: Server, protocol: str, model: str, row: torch.Tensor) -> tuple[int, np.ndarray[Any, Any], int]:
    """One row on one protocol → (status, output row, batch size from Server-Timing)."""
    if protocol == "v2":
        reply = server.post(
            f"/v2/models/{model}/infer", oip_json_request("x" if model == "probe" else "input", row[None])
        )
        output = oip_output(reply) if reply.status == 200 else np.empty(0)
    elif protocol == "v1":
        reply = server.post(f"/v1/models/{model}:predict", {"instances": [row.tolist()]})
        output = np.asarray(reply.json()["predictions"]) if reply.status == 200 else np.empty(0)
    else:
        reply = server.post(f"/predict/{model}", {"inputs": [row.tolist()]})
        output = np.asarray(reply.json()["outputs"]["output"]) if reply.status == 200 else np.empty(0)
    return reply.status, output, reply.batch_size() if reply.status == 200 else 0


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(server: Server, archives: Archives) -> None:
    """64 distinct rows at once on the slow-ish probe (10 ms a forward pass) with batches of up to 16:
    each answer equals the eager output of that row alone, and batches above 1 row did happen."""
    count = 64
    rows = probe_rows(count, delay=0.01, seed=11)
    rows[:, 3] += torch.arange(count) * 1e-4  # every row distinct in every column
    before = server.metrics()
    protocols = ("v2", "v1", "simple")
    calls = [lambda i=i: _send(server, protocols[i % 3], "probe", rows[i]) for i in range(count)]
    results = run_concurrently(calls)
    failures = [r for r in results if isinstance(r, BaseException) or r[0] != 200]
    assert not failures, failures[:3]
    for i, (_, output, _) in enumerate(results):
        np.testing.assert_allclose(output.reshape(1, 3), archives.probe_eager(rows[i : i + 1]).numpy(), **TOL)
    batch_sizes = [batch for _, _, batch in results]
    assert max(batch_sizes) > 1, batch_sizes
    assert max(batch_sizes) <= MAX_BATCH

    after = server.metrics()
    labels = {"model": "probe", "version": "1"}
    observed = after.total("torchferry_batch_size_count", **labels) - before.total(
        "torchferry_batch_size_count", **labels
    )
    rows_run = after.total("torchferry_batch_size_sum", **labels) - before.total("torchferry_batch_size_sum", **labels)
    single = after.total("torchferry_batch_size_bucket", le="1.0", **labels) - before.total(
        "torchferry_batch_size_bucket", le="1.0", **labels
    )
    assert rows_run == count
    assert observed < count  # fewer forward passes than requests
    assert single < observed  # some observations above the le="1" bucket: batches of more than one row
    print(f"\n{count} concurrent requests ran in {int(observed)} batches; sizes seen: {sorted(set(batch_sizes))}")


def test_concurrent_requests_on_the_exported_model(server: Server, archives: Archives) -> None:
    count = 64
    rows = torch.randn(count, 4, generator=torch.Generator().manual_seed(12))
    protocols = ("v2", "v1", "simple")
    results = run_concurrently([lambda i=i: _send(server, protocols[i % 3], "iris", rows[i]) for i in range(count)])
    for i, result in enumerate(results):
        assert not isinstance(result, BaseException) and result[0] == 200, result
        np.testing.assert_allclose(result[1].reshape(1, 3), eager(archives.iris_model, rows[i : i + 1]).numpy(), **TOL)
