"""Prometheus metrics of the server, per model version and protocol.

Each app owns its registry, so two apps in one process (tests, embedding) never mix
their counts. With ``--workers N`` every worker process writes its samples to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode) and ``/metrics``
on any worker sums all of them, so a scrape sees the whole server, not one worker.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE", "ServingMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MODEL = ("model", "version")


class ServingMetrics:
    """The server's counters, histograms and gauges, and the ``/metrics`` text."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode samples go to files; the collecting registry is built per scrape.
        self._registry: CollectorRegistry | None = None if self.multiprocess else CollectorRegistry()
        registry = self._registry
        self.requests = Counter(
            "torchferry_requests",
            "Inference requests answered, by model, version, protocol and HTTP status.",
            (*_MODEL, "protocol", "status"),
            registry=registry,
        )
        self.request_seconds = Histogram(
            "torchferry_request_duration_seconds",
            "Time from reading a request to its answer, decoding and encoding included.",
            (*_MODEL, "protocol"),
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "torchferry_queue_duration_seconds",
            "Time a request waited for the model.",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "torchferry_inference_duration_seconds",
            "Time of the forward pass that served a request (its whole batch).",
            _MODEL,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "torchferry_batch_size",
            "Rows per forward pass; above 1 means dynamic batching combined requests.",
            _MODEL,
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "torchferry_queue_depth",
            "Requests waiting for the model right now.",
            _MODEL,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.load_seconds = Gauge(
            "torchferry_model_load_seconds",
            "How long loading the model version took.",
            _MODEL,
            registry=registry,
            multiprocess_mode="max",
        )
        self.models_loaded = Gauge(
            "torchferry_model_loaded",
            "1 while the model version is loaded and serving.",
            _MODEL,
            registry=registry,
            multiprocess_mode="max",
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every sample (of every worker in multiprocess mode)."""
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
