"""Dynamic batching: idle requests run alone at once, busy ones together, results split exactly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from torchferry.errors import DeadlineExceededError, ModelFailedError, NotReadyError, OverloadedError
from torchferry.serving.batcher import Batcher

pytestmark = pytest.mark.unit


class Slow:
    """A real model behind a gate, so tests decide when the model is busy."""

    def __init__(self, delay_s: float = 0.0) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
        self.delay_s = delay_s
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.gate.wait(10)
        self.calls.append(int(inputs[0].shape[0]))
        if (inputs[0] == 666).any():
            raise RuntimeError("poisoned input")
        time.sleep(self.delay_s)
        return [self.model(inputs[0])]


def test_an_idle_model_runs_a_request_at_once_alone() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=8, max_delay_ms=2000)
    start = time.monotonic()
    result = batcher.submit_nowait([torch.randn(1, 4)]).result(5)
    assert time.monotonic() - start < 1.0  # no 2 s batching window at low load
    assert result.batch_size == 1 and model.calls == [1]
    batcher.close()


def test_busy_requests_run_together_and_each_gets_exactly_its_own_rows() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=64, max_delay_ms=0)
    model.gate.clear()  # the first request occupies the model...
    first = batcher.submit_nowait([torch.randn(2, 4)])
    time.sleep(0.05)
    inputs = [torch.randn(n, 4) for n in (1, 3, 2, 1, 5, 1, 1, 2)]
    futures = [batcher.submit_nowait([x]) for x in inputs]  # ...while these queue
    model.gate.set()
    first.result(5)
    results = [f.result(5) for f in futures]
    assert model.calls == [2, sum(len(x) for x in inputs)]
    for x, result in zip(inputs, results):
        assert result.batch_size == 16
        torch.testing.assert_close(result.outputs[0], model.model(x), rtol=0, atol=1e-6)
    assert batcher.batch_sizes[16] == 1
    batcher.close()


def test_batches_never_exceed_the_maximum_and_shapes_that_do_not_stack_wait() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=4, max_delay_ms=0)
    model.gate.clear()
    blocker = batcher.submit_nowait([torch.randn(1, 4)])
    time.sleep(0.05)
    futures = [batcher.submit_nowait([torch.randn(1, 4)]) for _ in range(10)]
    model.gate.set()
    blocker.result(5)
    assert all(f.result(5).outputs[0].shape == (1, 3) for f in futures)
    assert max(model.calls) <= 4 and sum(model.calls) == 11


def test_a_full_queue_is_refused_with_retry_after() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=2, queue_size=3)
    model.gate.clear()
    running = batcher.submit_nowait([torch.randn(1, 4)])
    time.sleep(0.05)
    queued = [batcher.submit_nowait([torch.randn(1, 4)]) for _ in range(3)]
    with pytest.raises(OverloadedError, match="3 requests queued") as info:
        batcher.submit_nowait([torch.randn(1, 4)])
    assert info.value.http_status == 429 and info.value.retry_after_s > 0
    model.gate.set()
    for future in [running, *queued]:
        future.result(5)
    batcher.close()


def test_a_request_past_its_deadline_is_answered_504_and_not_run() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=8)
    model.gate.clear()
    blocker = batcher.submit_nowait([torch.randn(1, 4)])
    time.sleep(0.05)
    late = batcher.submit_nowait([torch.full((1, 4), 7.0)], timeout_s=0.01)
    time.sleep(0.1)
    model.gate.set()
    blocker.result(5)
    with pytest.raises(DeadlineExceededError, match="past its deadline"):
        late.result(5)
    assert model.calls == [1]
    batcher.close()


def test_a_failing_request_fails_alone_and_the_worker_goes_on() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=8)
    model.gate.clear()
    blocker = batcher.submit_nowait([torch.randn(1, 4)])
    time.sleep(0.05)
    good = [batcher.submit_nowait([torch.randn(1, 4)]) for _ in range(3)]
    bad = batcher.submit_nowait([torch.full((1, 4), 666.0)])
    model.gate.set()
    blocker.result(5)
    assert all(f.result(5).outputs[0].shape == (1, 3) for f in good)
    with pytest.raises(ModelFailedError, match=r"error id [0-9a-f]{12}") as info:
        bad.result(5)
    assert info.value.http_status == 500
    assert batcher.submit_nowait([torch.randn(2, 4)]).result(5).outputs[0].shape == (2, 3)
    batcher.close()


def test_asyncio_callers_do_not_block_the_event_loop() -> None:
    model = Slow(delay_s=0.02)
    batcher = Batcher(model, max_batch_size=32, max_delay_ms=5)

    async def main() -> tuple[list[int], int]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        tick_task = asyncio.create_task(ticker())
        xs = [torch.randn(1, 4) for _ in range(40)]
        results = await asyncio.gather(*(batcher.submit([x]) for x in xs))
        stop.set()
        await tick_task
        for x, result in zip(xs, results):
            torch.testing.assert_close(result.outputs[0], model.model(x), rtol=0, atol=1e-6)
        return [r.batch_size for r in results], ticks

    sizes, ticks = asyncio.run(main())
    assert max(sizes) > 1  # concurrent callers were batched
    assert ticks >= 5  # the loop kept running while the model worked
    batcher.close()


def test_close_drains_queued_requests() -> None:
    model = Slow(delay_s=0.01)
    batcher = Batcher(model, max_batch_size=1)
    futures = [batcher.submit_nowait([torch.randn(1, 4)]) for _ in range(5)]
    batcher.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.submit_nowait([torch.randn(1, 4)])


def test_a_fast_idle_model_runs_one_row_inline_and_never_beside_the_worker() -> None:
    model = Slow()
    batcher = Batcher(model, max_batch_size=8, inline_below_ms=1000)
    x = torch.randn(1, 4)
    assert batcher.run_inline([x]) is None  # no measurement yet: the worker runs the first one
    batcher.submit_nowait([x]).result(5)
    assert batcher.forward_ema_s is not None
    caller = threading.get_ident()
    seen: list[int] = []
    model_call = model.__call__

    def record(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        seen.append(threading.get_ident())
        return model_call(inputs)

    batcher._run_batch = record
    result = batcher.run_inline([x])
    assert result is not None and result.queue_ms == 0 and result.batch_size == 1 and seen == [caller]
    torch.testing.assert_close(result.outputs[0], model.model(x).detach())
    assert batcher.run_inline([torch.randn(2, 4)]) is None  # only single rows
    model.gate.clear()  # the worker is busy: inline must not run the model beside it
    busy = batcher.submit_nowait([x])
    time.sleep(0.05)
    assert batcher.run_inline([x]) is None
    model.gate.set()
    busy.result(5)
    with pytest.raises(ModelFailedError, match="error id"):
        batcher.run_inline([torch.full((1, 4), 666.0)])
    assert batcher.submit_nowait([x]).result(5).batch_size == 1  # a failure inline leaves the model usable
    batcher.close()


def test_inline_is_off_by_default_and_for_slow_models() -> None:
    model = Slow(delay_s=0.01)
    batcher = Batcher(model, inline_below_ms=1)
    batcher.submit_nowait([torch.randn(1, 4)]).result(5)
    assert batcher.run_inline([torch.randn(1, 4)]) is None  # 10 ms forward > 1 ms
    batcher.close()
    off = Batcher(Slow())
    off.submit_nowait([torch.randn(1, 4)]).result(5)
    assert off.run_inline([torch.randn(1, 4)]) is None
    off.close()
