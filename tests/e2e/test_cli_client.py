"""``torchferry predict`` and ``torchferry bench`` against a real ``torchferry serve`` subprocess."""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import torchferry
from tests.serving_helpers import TinyConv
from torchferry.cli.main import main

pytestmark = pytest.mark.e2e

LABELS = ["setosa", "versicolor", "virginica"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
SERVE = [sys.executable, "-m", "torchferry.cli.main", "serve"]
STARTUP_S = 90.0
STOP_S = 15.0


@dataclass
class Models:
    iris: nn.Module
    iris_path: Path
    image_model: nn.Module
    image_path: Path
    png: Path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("client")
    torch.manual_seed(0)
    iris = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    torchferry.pack(iris, root / "iris.ferry", example_inputs=(torch.randn(1, 4),), name="iris", labels=LABELS)
    image_model = TinyConv().eval()
    torchferry.pack(
        image_model,
        root / "pets.ferry",
        example_inputs=torch.randn(2, 3, 8, 8),
        name="pets",
        labels=["cat", "dog", "owl"],
        preprocess=torchferry.ImageInput(center_crop=8),
        postprocess=torchferry.Classify(top_k=3, softmax=True),
    )
    pixels = np.random.default_rng(0).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "pet.png")
    return Models(iris, root / "iris.ferry", image_model, root / "pets.ferry", root / "pet.png")


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:  # noqa: S310 - our server
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_S)


@pytest.fixture(scope="module")
def server(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``torchferry serve`` on a free port of 127.0.0.1 (``--port 0``); its URL. Always stopped by its PID."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*SERVE, str(models.iris_path), str(models.image_path), "--port", "0", "--max-delay-ms", "2"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline, url = time.monotonic() + STARTUP_S, None
        while time.monotonic() < deadline and process.poll() is None:
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
            url = url or (found.group(1) if found else None)
            if url and _ready(url):
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the server did not become ready (exit code {process.poll()}):\n{log_path.read_text()}")
        assert url is not None
        yield url
    finally:
        _stop(process)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def eager(model: nn.Module, rows: list[list[float]]) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(torch.tensor(rows)).numpy())


def test_predict_json_matches_the_eager_model(server: str, models: Models, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "predict", server, "--model", "iris", "--input", json.dumps(ROWS), "--json")
    assert code == 0, err
    answer = json.loads(out)
    expected = eager(models.iris, ROWS)
    np.testing.assert_allclose(np.asarray(answer["outputs"]["output"]), expected, rtol=1e-5, atol=1e-6)
    assert answer["labels"]["output"] == [LABELS[i] for i in expected.argmax(-1)]

    code, out, err = cli(capsys, "predict", server, "-m", "iris", "-i", json.dumps(ROWS[0]))
    assert code == 0, err
    assert LABELS[int(expected[0].argmax())] in out and "iris:1" in out
    assert re.search(r"queue [\d.]+ ms, infer [\d.]+ ms, batch of \d+, total [\d.]+ ms", out), out


def test_predict_input_from_a_json_file(
    server: str, models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rows.json").write_text(json.dumps({"inputs": {"input": ROWS[:2]}}))
    code, out, err = cli(
        capsys, "predict", server, "--model", "iris", "--input", f"@{tmp_path / 'rows.json'}", "--json"
    )
    assert code == 0, err
    got = np.asarray(json.loads(out)["outputs"]["output"])
    np.testing.assert_allclose(got, eager(models.iris, ROWS[:2]), rtol=1e-5, atol=1e-6)


def test_predict_an_image(server: str, models: Models, capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.asarray(Image.open(models.png).convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(pixels[2:10, 2:10].transpose(2, 0, 1).copy()).unsqueeze(0)
    with torch.no_grad():
        probs = models.image_model(x).softmax(-1)[0]
    order = probs.argsort(descending=True).tolist()

    code, out, err = cli(capsys, "predict", server, "--model", "pets", "--input", str(models.png), "--json")
    assert code == 0, err
    ranked = json.loads(out)["outputs"]["output"]
    assert [r["label"] for r in ranked] == [["cat", "dog", "owl"][i] for i in order]
    np.testing.assert_allclose([r["score"] for r in ranked], probs[order].numpy(), rtol=1e-4)

    code, out, err = cli(capsys, "predict", server, "--model", "pets", "--input", str(models.png))
    assert code == 0, err
    assert "top 3" in out and ["cat", "dog", "owl"][order[0]] in out


def test_predict_with_the_open_inference_protocol(
    server: str, models: Models, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "predict", server, "-m", "iris", "-i", json.dumps(ROWS), "--protocol", "v2", "--json")
    assert code == 0, err
    (tensor,) = json.loads(out)["outputs"]
    assert tensor["name"] == "output" and tensor["datatype"] == "FP32" and tensor["shape"] == [3, 3]
    np.testing.assert_allclose(np.reshape(tensor["data"], (3, 3)), eager(models.iris, ROWS), rtol=1e-5, atol=1e-6)

    code, out, err = cli(capsys, "predict", server, "-m", "iris", "-i", json.dumps(ROWS[0]), "--protocol", "v2")
    assert code == 0, err
    assert "[3]" in out and "batch of 1" in out  # one row without its batch dimension comes back without one


def test_predict_a_file_here_without_a_server(models: Models, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "predict", str(models.iris_path), "--input", json.dumps(ROWS), "--json")
    assert code == 0, err
    answer = json.loads(out)
    np.testing.assert_allclose(np.asarray(answer["outputs"]["output"]), eager(models.iris, ROWS), rtol=1e-5, atol=1e-6)
    assert answer["model"] == "iris" and len(answer["labels"]["output"]) == len(ROWS)

    code, out, err = cli(capsys, "predict", str(models.image_path), "--input", str(models.png))
    assert code == 0, err
    assert "top 3" in out and "no server" in out


def test_server_errors_exit_1_with_the_servers_message(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "predict", server, "--model", "iris", "--input", "[[1.0, 2.0, 3.0]]")
    assert code == 1 and out == ""
    assert "400" in err and "expected shape [?,4], got [1, 3]" in err

    code, _, err = cli(capsys, "predict", server, "--model", "nope", "--input", "[[1.0, 2.0, 3.0, 4.0]]")
    assert code == 1 and "404" in err and "no model named 'nope'" in err

    code, _, err = cli(capsys, "predict", server, "--input", "[[1.0, 2.0, 3.0, 4.0]]")  # two models, no --model
    assert code == 1 and "iris" in err and "pets" in err and "--model" in err

    code, _, err = cli(capsys, "bench", server, "--model", "iris", "--input", "[[1.0]]", "--duration", "5")
    assert code == 1 and "expected shape" in err  # refused at once, not after 5 s of errors


def test_an_unreachable_url_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends: nothing listens there
    code, out, err = cli(capsys, "predict", f"http://127.0.0.1:{port}", "--model", "iris", "--input", "[[1, 2, 3, 4]]")
    assert code == 1 and out == ""
    assert f"cannot connect to http://127.0.0.1:{port}" in err and "torchferry serve" in err


def test_bench_reports_throughput_latency_and_batching(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "latency.png"
    code, out, err = cli(
        capsys,
        "bench",
        server,
        "--model",
        "iris",
        "--input",
        json.dumps(ROWS[:1]),
        "--concurrency",
        "4",
        "--duration",
        "2",
        "--warmup",
        "0.3",
        "--json",
        "--plot",
        str(plot),
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["requests"] > 0 and summary["errors"] == 0 and summary["ok"] == summary["requests"]
    latency = summary["latency_ms"]
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert 1.9 <= summary["duration_s"] < 5 and summary["requests_per_s"] > 0
    assert summary["connections_opened"] == 4  # kept alive: one connection per concurrent client
    assert 1 <= summary["server"]["batch_size_mean"] <= 4 and summary["server"]["infer_ms_mean"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(plot.read_bytes())) as image:
        assert image.size[0] > 300


def test_bench_a_request_count_over_v2_with_made_up_inputs(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(
        capsys, "bench", server, "-m", "iris", "-n", "60", "-c", "3", "--warmup", "0", "--protocol", "v2", "--json"
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["requests"] == 60 and summary["errors"] == 0 and summary["protocol"] == "v2"

    code, out, err = cli(capsys, "bench", server, "-m", "iris", "-n", "20", "-c", "2", "--warmup", "0")
    assert code == 0, err
    assert "req/s" in out and "p99" in out
