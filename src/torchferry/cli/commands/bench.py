"""``torchferry bench``: a closed-loop load generator for a model server.

``--concurrency`` keep-alive connections each send the same request back to back (the
next one as soon as the answer is in) until ``--duration`` seconds have passed or
``--requests`` are done, after ``--warmup`` seconds whose answers are not counted.
Latency is measured here, per request, from writing the request to reading the whole
answer; batch size, queue and inference times come from the server's Server-Timing.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from torchferry.cli._http import Connection, Endpoint, Response, TransportError, encode_request, is_url, run
from torchferry.cli._http import server_error as _server_error
from torchferry.cli._render import console, err_console
from torchferry.cli.commands.predict import (
    PROTOCOLS,
    Given,
    Target,
    example_value,
    metadata,
    read_input,
    served_model,
    simple_body,
    v2_body,
)
from torchferry.errors import UsageError

__all__ = ["Plan", "Stats", "bench_command", "summarize"]

EPILOG = """Examples:

  torchferry bench http://127.0.0.1:8080 --model iris                 # 16 connections for 10 s, made-up inputs

  torchferry bench http://127.0.0.1:8080 --model iris --input '[[5.1, 3.5, 1.4, 0.2]]' --concurrency 64

  torchferry bench http://127.0.0.1:8080 --model iris --requests 5000 --protocol v2 --json

  torchferry bench http://127.0.0.1:8080 --model resnet --input cat.jpg --duration 30 --plot latency.png

Without --input, the request holds made-up values of the model's input shapes (from GET /v2/models/M).
Prints throughput, latency percentiles, errors by status, and the mean batch size, queue and inference
times the server reports in its Server-Timing header.
"""

DEFAULT_DURATION_S = 10.0
_RETRY_PAUSE_S = 0.05
"""A connection that could not reach the server waits this long before its next try."""


@dataclass(frozen=True)
class Plan:
    """What to send, where, how many at a time, and for how long."""

    endpoint: Endpoint
    request: bytes
    what: str
    """``POST http://...``, for messages."""
    concurrency: int
    duration_s: float | None
    requests: int | None
    warmup_s: float
    timeout_s: float


@dataclass
class Stats:
    """What came back: latencies of the successful requests (ms), outcomes by status, Server-Timing sums."""

    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    queue_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False
    """Stopped early by Ctrl-C."""
    connections_opened: int = 0

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return sum(n for key, n in self.outcomes.items() if not key.startswith("2"))

    def record(self, response: Response, latency_ms: float) -> None:
        self.outcomes[str(response.status)] += 1
        if not response.ok:
            return
        self.latencies_ms.append(latency_ms)
        timing = response.timing
        if timing.queue_ms is not None:
            self.queue_ms.append(timing.queue_ms)
        if timing.infer_ms is not None:
            self.infer_ms.append(timing.infer_ms)
        if timing.total_ms is not None:
            self.total_ms.append(timing.total_ms)
        if timing.batch_size is not None:
            self.batch_sizes.append(timing.batch_size)


class _Budget:
    """Hands out permission for one more request until the deadline or the request count is reached."""

    def __init__(self, duration_s: float | None, requests: int | None) -> None:
        self.deadline = None if duration_s is None else time.perf_counter() + duration_s
        self.limit = requests
        self.issued = 0
        self.stopped = False

    def take(self) -> bool:
        if self.stopped:
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        if self.limit is not None and self.issued >= self.limit:
            return False
        self.issued += 1
        return True


async def _worker(connection: Connection, request: bytes, budget: _Budget, stats: Stats) -> None:
    while budget.take():
        start = time.perf_counter()
        try:
            response = await connection.request(request)
        except TransportError as exc:
            stats.outcomes[exc.kind] += 1
            await asyncio.sleep(_RETRY_PAUSE_S)  # a down server must not turn this into a busy loop
            continue
        stats.record(response, 1000 * (time.perf_counter() - start))


Tick = Callable[[Stats, float], None]
"""Called a few times a second while measuring: the stats so far and the seconds elapsed."""


def _on_interrupt(budget: _Budget, workers: Sequence[asyncio.Future[None]]) -> Callable[[], None]:
    """Ctrl-C: the first stops sending (answers in flight still count), the second abandons them."""

    def interrupt() -> None:
        if budget.stopped:
            for worker in workers:
                worker.cancel()
        budget.stopped = True

    return interrupt


async def _phase(
    connections: list[Connection], plan: Plan, budget: _Budget, stats: Stats, tick: Tick | None, *, measuring: bool
) -> None:
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    workers = [asyncio.ensure_future(_worker(c, plan.request, budget, stats)) for c in connections]
    handles_sigint = measuring and _add_sigint_handler(loop, _on_interrupt(budget, workers))
    try:
        while tick is not None and not all(w.done() for w in workers):
            tick(stats, time.perf_counter() - start)
            await asyncio.wait(workers, timeout=0.2)
        for result in await asyncio.gather(*workers, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
    finally:
        for worker in workers:
            worker.cancel()
        if handles_sigint:
            loop.remove_signal_handler(signal.SIGINT)
        stats.elapsed_s = time.perf_counter() - start
        stats.interrupted = budget.stopped


def _add_sigint_handler(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> bool:
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        return False
    return True


async def measure(plan: Plan, tick: Tick | None = None) -> Stats:
    """Probe once (an error answer stops here, with the server's message), warm up, then measure."""
    connections = [Connection(plan.endpoint, timeout=plan.timeout_s) for _ in range(plan.concurrency)]
    try:
        probe = await connections[0].request(plan.request)
        if not probe.ok:
            raise _server_error(probe, f"the benchmark's request ({plan.what})")
        if plan.warmup_s > 0:
            await _phase(connections, plan, _Budget(plan.warmup_s, None), Stats(), None, measuring=False)
        stats = Stats()
        await _phase(connections, plan, _Budget(plan.duration_s, plan.requests), stats, tick, measuring=True)
        stats.connections_opened = sum(c.opened for c in connections)
        return stats
    finally:
        await asyncio.gather(*(c.close() for c in connections))


def _mean(values: list[float] | list[int]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def summarize(plan: Plan, stats: Stats, *, model: str, protocol: str) -> dict[str, Any]:
    """The run as a JSON-able dict (what ``--json`` prints)."""
    latency: dict[str, float | None] = dict.fromkeys(("mean", "min", "p50", "p90", "p99", "max"))
    if stats.latencies_ms:
        values = np.asarray(stats.latencies_ms)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        found = {"mean": values.mean(), "min": values.min(), "p50": p50, "p90": p90, "p99": p99, "max": values.max()}
        latency = {key: round(float(value), 3) for key, value in found.items()}
    ok = len(stats.latencies_ms)
    elapsed = max(stats.elapsed_s, 1e-9)
    return {
        "url": plan.endpoint.url(),
        "model": model,
        "protocol": protocol,
        "concurrency": plan.concurrency,
        "duration_s": round(stats.elapsed_s, 3),
        "requests": stats.completed,
        "ok": ok,
        "errors": stats.errors,
        "errors_by_status": {key: n for key, n in sorted(stats.outcomes.items()) if not key.startswith("2")},
        "requests_per_s": round(ok / elapsed, 2),
        "latency_ms": latency,
        "server": {
            "batch_size_mean": _mean(stats.batch_sizes),
            "queue_ms_mean": _mean(stats.queue_ms),
            "infer_ms_mean": _mean(stats.infer_ms),
            "total_ms_mean": _mean(stats.total_ms),
        },
        "connections_opened": stats.connections_opened,
        "interrupted": stats.interrupted,
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "—" if value is None else f"{value:,.3g}{unit}" if value < 1000 else f"{value:,.0f}{unit}"


def print_summary(summary: dict[str, Any]) -> None:
    latency, server = summary["latency_ms"], summary["server"]
    facts = Table(show_header=False, box=None, padding=(0, 2))
    facts.add_row(
        "target",
        f"{summary['model']} at {summary['url']} ({summary['protocol']}), {summary['concurrency']} connections, "
        f"{summary['duration_s']:.1f} s" + (" (stopped early by Ctrl-C)" if summary["interrupted"] else ""),
    )
    facts.add_row("requests", f"{summary['requests']:,} ({summary['errors']:,} errors)")
    facts.add_row("throughput", f"{summary['requests_per_s']:,.1f} req/s")
    facts.add_row(
        "latency",
        "  ".join(f"{key} {_fmt(latency[key], ' ms')}" for key in ("p50", "p90", "p99", "max"))
        + f"  (mean {_fmt(latency['mean'], ' ms')})",
    )
    if any(value is not None for value in server.values()):
        facts.add_row(
            "server (means)",
            f"batch {_fmt(server['batch_size_mean'])}  queue {_fmt(server['queue_ms_mean'], ' ms')}  "
            f"infer {_fmt(server['infer_ms_mean'], ' ms')}  total {_fmt(server['total_ms_mean'], ' ms')}",
        )
    if summary["errors_by_status"]:
        errors = ", ".join(f"{key}: {n:,}" for key, n in summary["errors_by_status"].items())
        facts.add_row("errors", Text(errors, style="bold red"))
    console.print(facts)


def save_plot(path: Path, stats: Stats, summary: dict[str, Any]) -> None:
    """A latency histogram with the percentiles marked, as ``path`` (PNG, SVG or PDF by its suffix)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib (or leave out --plot).") from None
    values = np.asarray(stats.latencies_ms)
    if values.size == 0:
        raise UsageError("no request succeeded, so there is no latency to plot.")
    latency = summary["latency_ms"]
    upper = min(float(values.max()), 2 * float(latency["p99"])) or 1.0
    hidden = int((values > upper).sum())
    figure = Figure(figsize=(8, 4.5), dpi=110)
    axes = figure.add_subplot()
    axes.hist(values, bins=max(10, min(120, int(math.sqrt(values.size)))), range=(0, upper), color="#4c72b0")
    for key, color in (("p50", "#2ca02c"), ("p90", "#ff7f0e"), ("p99", "#d62728")):
        axes.axvline(latency[key], color=color, linestyle="--", label=f"{key} {latency[key]:.3g} ms")
    axes.set_xlabel(
        "latency (ms)" + (f"; {hidden} slower requests (up to {values.max():.4g} ms) not shown" * bool(hidden))
    )
    axes.set_ylabel("requests")
    axes.set_title(
        f"{summary['model']} ({summary['protocol']}): {summary['concurrency']} connections, "
        f"{summary['requests_per_s']:,.0f} req/s, {summary['ok']:,} requests"
    )
    axes.legend()
    figure.tight_layout()
    try:
        figure.savefig(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the plot to {path}: {exc}.") from None


def _request(target: Target, given: Given | None, protocol: str) -> bytes:
    if given is None:
        given = Given("made-up values", value=example_value(metadata(target)))
    if protocol == "v2":
        body, content_type = v2_body(given, metadata(target))[0], "application/json"
    else:
        body, content_type = simple_body(given), given.content_type
    return encode_request(target.endpoint, "POST", target.path(protocol), body, content_type=content_type)


def _measure_with_progress(plan: Plan) -> Stats:
    if not err_console.is_terminal:
        return run(measure(plan))
    total = plan.duration_s if plan.duration_s is not None else float(plan.requests or 1)
    unit = "s" if plan.duration_s is not None else "requests"
    done = TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit)
    columns = (TextColumn("{task.description}"), BarColumn(), done, TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("bench", total=total, info="warming up" if plan.warmup_s else "")

        def tick(stats: Stats, elapsed: float) -> None:
            done = elapsed if plan.duration_s is not None else stats.completed
            rate = len(stats.latencies_ms) / elapsed if elapsed > 0 else 0.0
            info = f"{stats.completed:,} requests, {rate:,.0f} req/s, {stats.errors:,} errors"
            progress.update(task, completed=min(done, total), info=info)

        return run(measure(plan, tick))


def bench_command(
    url: Annotated[str, typer.Argument(help="The server's URL, e.g. http://127.0.0.1:8080.", show_default=False)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="The model to load-test [default: the only one the server serves].",
            show_default=False,
        ),
    ] = None,
    input_: Annotated[
        str | None,
        typer.Option(
            "--input",
            "-i",
            help="The request's inputs, as for `torchferry predict`: JSON text, @file.json, or an image file "
            "[default: made-up values of the model's input shapes].",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="The model version [default: the server's default].", show_default=False)
    ] = None,
    protocol: Annotated[
        str, typer.Option(help="simple (POST /predict/M) or v2 (Open Inference Protocol, POST /v2/models/M/infer).")
    ] = "simple",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Connections, each with one request in flight.", min=1, max=4096)
    ] = 16,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            "-d",
            help=f"Seconds to measure [default: {DEFAULT_DURATION_S:g}; with --requests, until they are done].",
            min=0.001,
            show_default=False,
        ),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            "--requests",
            "-n",
            help="Stop after this many requests (or --duration, if sooner).",
            min=1,
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[float, typer.Option(help="Seconds of load before measuring (not counted).", min=0)] = 1.0,
    timeout: Annotated[
        float, typer.Option(help="Seconds one request may take before it counts as an error.", min=0.001)
    ] = 30.0,
    plot: Annotated[
        Path | None, typer.Option(help="Save a latency histogram here (PNG; needs matplotlib).", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Load-test a model server: concurrent keep-alive connections send the same request
    back to back; prints throughput, latency percentiles (p50/p90/p99/max), errors by
    status, and the mean batch size, queue and inference times the server reports.
    """
    if not is_url(url):
        raise UsageError(
            f"bench needs a server URL such as http://127.0.0.1:8080, not {url!r}; "
            "start one with `torchferry serve MODEL.ferry`."
        )
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}.")
    given = None if input_ is None else read_input(input_)
    endpoint = Endpoint.parse(url)
    target = Target(endpoint, served_model(endpoint, model, timeout), version, timeout)
    plan = Plan(
        endpoint=endpoint,
        request=_request(target, given, protocol),
        what=f"POST {endpoint.url(target.path(protocol))}",
        concurrency=concurrency,
        duration_s=DEFAULT_DURATION_S if duration is None and requests is None else duration,
        requests=requests,
        warmup_s=warmup,
        timeout_s=timeout,
    )
    stats = _measure_with_progress(plan)
    summary = summarize(plan, stats, model=target.model, protocol=protocol)
    if plot is not None:
        save_plot(plot, stats, summary)
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        print_summary(summary)
        if plot is not None:
            console.print(Text(f"latency histogram: {plot}"))
