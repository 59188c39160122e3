"""One loaded model version: its ``Packaged`` model, its batcher and its statistics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from torchferry.archive.manifest import Manifest, Signature
from torchferry.errors import DeadlineExceededError, FerryError, InputError, NotReadyError
from torchferry.runtime.inputs import check_same_batch, check_tensor, to_tensor
from torchferry.runtime.packaged import Packaged
from torchferry.serving.batcher import Batcher, BatchResult
from torchferry.serving.config import ModelOptions
from torchferry.serving.metrics import ServingMetrics

__all__ = ["HostedModel", "Stats"]


@dataclass
class Stats:
    """Cumulative counts and times, in the shape of Triton's statistics extension."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_ns: int = 0
    infer_ns: int = 0
    input_ns: int = 0
    """Decoding and checking request tensors."""
    output_ns: int = 0
    """Encoding response tensors."""
    inference_count: int = 0
    """Rows inferred (Triton counts a batch-8 request as 8 inferences)."""
    last_inference_ms: int = 0


class HostedModel:
    """A model version the server answers for; created and closed by the ``ModelManager``."""

    def __init__(
        self,
        name: str,
        version: str,
        packaged: Packaged,
        options: ModelOptions,
        *,
        source: str,
        load_seconds: float,
        metrics: ServingMetrics,
    ) -> None:
        self.name = name
        self.version = version
        self.packaged = packaged
        self.options = options
        self.source = source
        self.load_seconds = load_seconds
        self.stats = Stats()
        self.replaced_by: HostedModel | None = None
        """Set when a reload of the same version takes over; late requests follow it."""
        self._metrics = metrics
        # children looked up once: labels() per request costs more than the observation
        self._queue_seconds = metrics.queue_seconds.labels(name, version)
        self._inference_seconds = metrics.inference_seconds.labels(name, version)
        self._batch_size = metrics.batch_size.labels(name, version)
        self._queue_depth = metrics.queue_depth.labels(name, version)
        self.batcher = Batcher(
            packaged.run,
            name=f"{name}:{version}",
            max_batch_size=options.max_batch_size,
            max_delay_ms=options.max_delay_ms,
            queue_size=options.queue_size,
            batchable=self.batchable,
            torch_threads=options.torch_threads,
            on_batch=self._observe_batch,
            inline_below_ms=options.inline_below_ms,
        )
        metrics.load_seconds.labels(name, version).set(load_seconds)
        metrics.models_loaded.labels(name, version).set(1)

    @property
    def manifest(self) -> Manifest:
        return self.packaged.manifest

    @property
    def signature(self) -> Signature:
        return self.packaged.signature

    @property
    def batchable(self) -> bool:
        """Every input and output has a dynamic first dimension, so requests can be stacked."""
        specs = (*self.signature.inputs, *self.signature.outputs)
        return all(spec.shape and spec.shape[0] == -1 for spec in specs)

    def check_inputs(self, named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Tensors by name (e.g. decoded from OIP) → signature order, cast within kind and shape-checked."""
        expected = [spec.name for spec in self.signature.inputs]
        if sorted(named) != sorted(expected):
            raise InputError(f"model {self.name} takes inputs {expected}, got {list(named)}.")
        tensors = []
        for spec in self.signature.inputs:
            tensor = to_tensor(spec, named[spec.name])
            check_tensor(spec, tensor)
            tensors.append(tensor)
        check_same_batch(self.signature, tensors)
        return tensors

    async def infer(self, tensors: Sequence[torch.Tensor], *, deadline: float | None) -> BatchResult:
        """Run one request through the batcher; ``deadline`` is a ``time.monotonic()`` instant."""
        start = time.monotonic()
        try:
            inline = self.batcher.run_inline(tensors) if not self.batcher.depth else None
        except FerryError:
            self._record_failure(start)
            raise
        if inline is not None:
            self._record_success(start, inline, 1)
            return inline
        timeout = None if deadline is None else deadline - start
        try:
            future = self._submit(tensors, start, deadline, timeout)
        except NotReadyError:
            if self.replaced_by is None:
                self._record_failure(start)
                raise
            # routed here just before a reload of this version took over: the new one answers
            return await self.replaced_by.infer(tensors, deadline=deadline)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()  # still queued: it will not run; running: its answer is dropped
            self._record_failure(start)
            raise DeadlineExceededError(self._late(start, deadline)) from None
        except FerryError:
            self._record_failure(start)
            raise
        self._record_success(start, result, int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1)
        return result

    def _submit(
        self, tensors: Sequence[torch.Tensor], start: float, deadline: float | None, timeout: float | None
    ) -> concurrent.futures.Future[BatchResult]:
        try:
            if timeout is not None and timeout <= 0:
                raise DeadlineExceededError(self._late(start, deadline))
            future = self.batcher.submit_nowait(tensors, timeout_s=timeout)
        except FerryError as exc:
            if not isinstance(exc, NotReadyError):  # the caller decides: a reload may take it over
                self._record_failure(start)
            raise
        self._queue_depth.set(self.batcher.depth)
        return future

    def _observe_batch(self, rows: int, seconds: float) -> None:
        self._batch_size.observe(rows)

    def _late(self, start: float, deadline: float | None) -> str:
        budget = self.options.timeout_ms if deadline is None else 1000 * (deadline - start)
        return (
            f"model {self.name}:{self.version} did not answer within the request's deadline "
            f"({budget:.0f} ms left when it arrived); retry later, send less per request, or raise --timeout-ms."
        )

    def _record_success(self, start: float, result: BatchResult, rows: int) -> None:
        stats = self.stats
        elapsed_ns = int((time.monotonic() - start) * 1e9)
        stats.success_count += 1
        stats.success_ns += elapsed_ns
        stats.queue_ns += int(result.queue_ms * 1e6)
        stats.infer_ns += int(result.infer_ms * 1e6)
        stats.inference_count += rows
        stats.last_inference_ms = int(time.time() * 1000)
        self._queue_seconds.observe(result.queue_ms / 1000)
        self._inference_seconds.observe(result.infer_ms / 1000)
        self._queue_depth.set(self.batcher.depth)

    def _record_failure(self, start: float) -> None:
        self.stats.fail_count += 1
        self.stats.fail_ns += int((time.monotonic() - start) * 1e9)
        self._queue_depth.set(self.batcher.depth)

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Answer what is queued, then stop the model's worker thread."""
        self.batcher.close(timeout_s=timeout_s)
        if self.replaced_by is None:  # a reload of this version owns the gauges now
            self._metrics.models_loaded.labels(self.name, self.version).set(0)
            self._queue_depth.set(0)
