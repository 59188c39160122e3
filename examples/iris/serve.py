"""Serve ``iris@production`` over HTTP, query it three ways, read the metrics, shut down.

    TORCHFERRY_HOME=.demo/registry python serve.py

Starts ``torchferry serve iris@production --port 0`` (a free port on 127.0.0.1), waits
until ``/v2/health/ready`` answers, then: asks with ``torchferry predict``, posts the
JSON a ``curl`` user would send, sends a burst of concurrent requests so that dynamic
batching shows, prints a summary of ``/metrics``, and stops the server with SIGTERM,
which must drain and exit 0. Uses only the standard library and the torchferry command.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

LISTENING = re.compile(r"Uvicorn running on (?P<url>http://[\d.]+:\d+)")
FLOWER = [5.1, 3.5, 1.4, 0.2]
BURST = 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="iris@production", help="what to serve (default iris@production)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for the server (default 60)")
    return parser.parse_args(argv)


def torchferry(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchferry.cli.main", *args]


def start(model: str, timeout: float) -> tuple[subprocess.Popen[str], str]:
    """The server process and its URL, once it accepts requests; its log goes to our stdout."""
    command = torchferry("serve", model, "--port", "0", "--torch-threads", "1", "--max-delay-ms", "2")
    print(f"$ torchferry serve {model} --port 0 --torch-threads 1 --max-delay-ms 2")
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    found: list[str] = []
    ready = threading.Event()

    def echo(stream: object) -> None:  # keep draining the log so the server never blocks on it
        for line in stream:  # type: ignore[attr-defined]
            if "torchferry.access" not in line:
                print(f"  [server] {line.rstrip()}")
            match = LISTENING.search(line)
            if match and not found:
                found.append(match["url"])
                ready.set()

    threading.Thread(target=echo, args=(process.stderr,), daemon=True).start()
    if not ready.wait(timeout) or process.poll() is not None:
        process.kill()
        raise SystemExit(f"the server did not start within {timeout:.0f} s (exit code {process.poll()})")
    url = found[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server never became ready")


def post(url: str, payload: object) -> tuple[dict[str, object], dict[str, str]]:
    request = urllib.request.Request(  # noqa: S310 - our own server on 127.0.0.1
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read()), dict(response.headers)


def ask_with_cli(url: str) -> None:
    args = ["predict", url, "--model", "iris", "--input", json.dumps([FLOWER])]
    print(f"$ torchferry {' '.join(args[:-1])} '{args[-1]}'")
    completed = subprocess.run(torchferry(*args), capture_output=True, text=True, check=False)
    print("  " + completed.stdout.strip().replace("\n", "\n  "))
    if completed.returncode != 0:
        raise SystemExit(f"torchferry predict failed: {completed.stderr.strip()}")


def ask_like_curl(url: str) -> None:
    body = {"inputs": [FLOWER, [6.7, 3.0, 5.2, 2.3]]}
    print(f"$ curl -s {url}/predict/iris -d '{json.dumps(body)}'")
    answer, headers = post(f"{url}/predict/iris", body)
    print(f"  {json.dumps(answer)}")
    print(f"  Server-Timing: {headers.get('server-timing')}")
    outputs = answer["outputs"]  # a Classify step: ranked {"label", "score"} lists per flower
    first = outputs["output"][0][0]["label"] if isinstance(outputs, dict) else None
    if first != "setosa":
        raise SystemExit(f"expected the first flower to be labelled setosa, got {outputs}")


def burst(url: str) -> None:
    print(f"$ ({BURST} concurrent POST /v2/models/iris/infer requests)")
    request = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": FLOWER}]}
    with ThreadPoolExecutor(max_workers=BURST) as pool:
        answers = list(pool.map(lambda _: post(f"{url}/v2/models/iris/infer", request)[0], range(BURST * 2)))
    sizes = [a["parameters"]["batch_size"] for a in answers]  # type: ignore[index]
    print(f"  {len(answers)} answers, all 200; batch sizes seen: {sorted(set(sizes))}")


def metric_summary(url: str) -> None:
    print(f"$ curl -s {url}/metrics   (summary)")
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith("torchferry_requests_total{"):
            print(f"  {line}")
    batches = _sample(text, "torchferry_batch_size_count")
    rows = _sample(text, "torchferry_batch_size_sum")
    infer = _sample(text, "torchferry_inference_duration_seconds_sum")
    requests = _sample(text, "torchferry_inference_duration_seconds_count")
    print(
        f"  {int(batches)} forward passes served {int(rows)} rows (mean batch {rows / max(batches, 1):.1f}); "
        f"mean inference {1000 * infer / max(requests, 1):.2f} ms per request"
    )


def _sample(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def stop(process: subprocess.Popen[str]) -> None:
    print("$ kill -TERM <server pid>")
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise SystemExit("the server did not stop within 30 s of SIGTERM") from None
    if code != 0:
        raise SystemExit(f"the server exited with {code} after SIGTERM, expected 0")
    print("  drained and exited 0")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process, url = start(args.model, args.timeout)
    try:
        ask_with_cli(url)
        ask_like_curl(url)
        burst(url)
        metric_summary(url)
    finally:
        if process.poll() is None:
            stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
