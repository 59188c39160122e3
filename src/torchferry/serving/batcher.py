"""Dynamic batching for one model version: idle → run now; busy → queue and run together.

One worker thread per model runs the model, so the event loop keeps answering (health
checks, other models) while a forward is in flight. A request that arrives while the
model is idle runs at once, alone: no added delay at low load. Requests that arrive
while it is busy queue up; when the model frees, everything queued that can be stacked
(same non-batch dimensions) runs as one batch of at most ``max_batch_size`` rows,
waiting up to ``max_delay_ms`` for a fuller batch only while requests keep arriving
faster than the model serves them. The queue is bounded (``OverloadedError``), every
request may carry a deadline (``DeadlineExceededError``), and a batch that fails is
re-run request by request so that only the request that breaks the model fails.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from torchferry.errors import DeadlineExceededError, ModelFailedError, NotReadyError, OverloadedError

log = logging.getLogger("torchferry.serving")

RunBatch = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]
"""Inputs stacked along dim 0, in signature order → outputs with the same dim 0."""

__all__ = ["BatchResult", "Batcher"]


@dataclass(frozen=True)
class BatchResult:
    """One request's outputs and how it was served."""

    outputs: list[torch.Tensor]
    queue_ms: float
    infer_ms: float
    batch_size: int


@dataclass
class _Request:
    inputs: Sequence[torch.Tensor]
    rows: int
    key: tuple[tuple[int, ...], ...]
    future: concurrent.futures.Future[BatchResult]
    enqueued: float
    deadline: float | None
    started: float = field(default=0.0)


class Batcher:
    """Queues requests for one model and runs them in batches on a dedicated thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        name: str = "model",
        max_batch_size: int = 32,
        max_delay_ms: float = 0.0,
        queue_size: int = 256,
        batchable: bool = True,
        torch_threads: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        inline_below_ms: float = 0.0,
    ) -> None:
        if max_batch_size < 1 or queue_size < 1 or max_delay_ms < 0:
            raise ValueError("max_batch_size and queue_size must be >= 1 and max_delay_ms >= 0")
        self.name = name
        self.max_batch_size = max_batch_size if batchable else 1
        self.max_delay_s = max_delay_ms / 1000
        self.queue_size = queue_size
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._torch_threads = torch_threads
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._busy = False
        self._running = False
        """A forward pass is in progress (worker thread or inline): the model runs one at a time."""
        self._inline_below_s = inline_below_ms / 1000
        self.forward_ema_s: float | None = None
        """Moving average of forward passes (of any size), which decides whether ``run_inline`` may run."""
        self.batches_run = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.batch_infer_ns: collections.Counter[int] = collections.Counter()
        """Inference time summed by batch size (Triton's ``batch_stats``)."""
        self._thread = threading.Thread(target=self._loop, name=f"torchferry-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ caller side
    @property
    def depth(self) -> int:
        """Requests waiting (not running)."""
        return len(self._queue)

    def submit_nowait(
        self, inputs: Sequence[torch.Tensor], *, timeout_s: float | None = None
    ) -> concurrent.futures.Future[BatchResult]:
        """Queue one request (inputs with a batch dim, in signature order); thread-safe."""
        rows = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        now = time.monotonic()
        request = _Request(
            inputs,
            rows,
            tuple(tuple(t.shape[1:]) for t in inputs),
            concurrent.futures.Future(),
            now,
            None if timeout_s is None else now + timeout_s,
        )
        with self._cond:
            if self._closing:
                raise NotReadyError(f"model {self.name} is shutting down; retry on another replica.")
            if len(self._queue) >= self.queue_size:
                raise OverloadedError(
                    f"model {self.name} has {len(self._queue)} requests queued (the limit); retry shortly or raise "
                    "--queue-size / add workers.",
                    retry_after_s=max(0.05, self.max_delay_s * 2),
                )
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def run_inline(self, inputs: Sequence[torch.Tensor]) -> BatchResult | None:
        """Run a one-row request now, on the caller's thread, when the model is idle and its forward
        pass is known to take less than ``inline_below_ms``; ``None`` means "submit it instead".

        For a model that answers in tens of microseconds, handing the request to the worker
        thread and the answer back costs more than the forward itself; running it on the
        event loop removes both hand-offs and blocks the loop no longer than that.
        """
        ema = self.forward_ema_s
        if ema is None or ema >= self._inline_below_s or not inputs or inputs[0].dim() == 0 or inputs[0].shape[0] != 1:
            return None
        with self._cond:
            if self._running or self._queue or self._closing:
                return None
            self._running = True
        try:
            start = time.monotonic()
            try:
                with torch.inference_mode():
                    outputs = list(self._run_batch(list(inputs)))
            except Exception:
                raise self._failure() from None
            elapsed = time.monotonic() - start
            self._account(1, elapsed)
        finally:
            with self._cond:
                self._running = False
                if self._queue:
                    self._cond.notify()
        return BatchResult(outputs, 0.0, 1000 * elapsed, 1)

    async def submit(self, inputs: Sequence[torch.Tensor], *, timeout_s: float | None = None) -> BatchResult:
        """Queue one request and wait for its result without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_nowait(inputs, timeout_s=timeout_s))

    def close(self, *, timeout_s: float = 30.0) -> None:
        """Finish queued requests, then stop the worker thread (drain)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------ worker side
    def _loop(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except Exception:  # never let the worker die: every later request would hang
                log.exception("model %s: unexpected error in the batch loop", self.name)
                for request in batch:
                    if not request.future.done():
                        self._fail(request)
            finally:
                with self._cond:
                    self._running = False

    def _next_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue or self._running:
                if self._closing and not self._queue:
                    return None
                self._cond.wait()
            self._running = True
            busy = self._busy  # the previous batch ended with requests waiting: load is high
            batch = self._take()
            deadline = time.monotonic() + self.max_delay_s
            while busy and self._rows(batch) < self.max_batch_size and not self._closing:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
                batch += self._take(self._rows(batch), batch[0].key)
            self._busy = bool(self._queue)
            return batch

    @staticmethod
    def _rows(batch: list[_Request]) -> int:
        return sum(r.rows for r in batch)

    def _take(self, rows: int = 0, key: tuple[tuple[int, ...], ...] | None = None) -> list[_Request]:
        """Pop queued requests that stack with ``key`` (the first one's shapes), up to the row limit."""
        taken: list[_Request] = []
        kept: collections.deque[_Request] = collections.deque()
        while self._queue:
            request = self._queue.popleft()
            key = request.key if key is None else key
            fits = rows + request.rows <= self.max_batch_size or (not taken and rows == 0)
            if request.key == key and fits:
                taken.append(request)
                rows += request.rows
            else:
                kept.append(request)
        self._queue.extendleft(reversed(kept))
        return taken

    def _run(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        live = []
        for request in batch:
            if not request.future.set_running_or_notify_cancel():
                continue  # its caller gave up (e.g. its own deadline timer fired while it was queued)
            if request.deadline is not None and now > request.deadline:
                request.future.set_exception(
                    DeadlineExceededError(
                        f"the request waited {1000 * (now - request.enqueued):.0f} ms in the queue of model "
                        f"{self.name}, past its deadline; retry later or raise --timeout-ms."
                    )
                )
            else:
                request.started = now
                live.append(request)
        if not live:
            return
        try:
            self._run_together(live)
        except Exception:
            if len(live) == 1:
                self._fail(live[0])
            else:  # find the request that breaks the model; the others still get answers
                for request in live:
                    try:
                        self._run_together([request])
                    except Exception:
                        self._fail(request)

    def _run_together(self, batch: list[_Request]) -> None:
        start = time.monotonic()
        if len(batch) == 1:
            stacked = list(batch[0].inputs)
        else:
            stacked = [torch.cat(parts) for parts in zip(*(r.inputs for r in batch))]
        with torch.inference_mode():
            outputs = list(self._run_batch(stacked))
        elapsed = time.monotonic() - start
        infer_ms = 1000 * elapsed
        rows = self._rows(batch)
        if len(batch) > 1 and any(o.dim() == 0 or o.shape[0] != rows for o in outputs):
            raise ValueError("outputs do not have the batch dimension")  # re-run one by one
        self._account(rows, elapsed)
        offset = 0
        for request in batch:
            parts = outputs if len(batch) == 1 else [o[offset : offset + request.rows] for o in outputs]
            offset += request.rows
            queue_ms = 1000 * (request.started - request.enqueued)
            request.future.set_result(BatchResult(parts, queue_ms, infer_ms, rows))

    def _account(self, rows: int, elapsed: float) -> None:
        self.batches_run += 1
        self.batch_sizes[rows] += 1
        self.batch_infer_ns[rows] += int(elapsed * 1e9)
        # every pass counts: a batch takes at least as long as one of its rows would alone, so a
        # model that left inline mode under load (batches of many rows) can come back to it
        ema = self.forward_ema_s
        self.forward_ema_s = elapsed if ema is None else 0.8 * ema + 0.2 * elapsed
        if self._on_batch is not None:
            try:
                self._on_batch(rows, elapsed)
            except Exception:  # a metrics hook must not make a good batch look failed
                log.exception("model %s: the batch hook failed", self.name)

    def _failure(self) -> ModelFailedError:
        error_id = uuid.uuid4().hex[:12]
        log.exception("model %s failed on a request (error id %s)", self.name, error_id)
        return ModelFailedError(
            f"model {self.name} raised while running this request (error id {error_id}; the server log has the "
            "traceback). Other requests are not affected.",
            error_id=error_id,
        )

    def _fail(self, request: _Request) -> None:
        request.future.set_exception(self._failure())
