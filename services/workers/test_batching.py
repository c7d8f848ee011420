"""The micro-batcher: concurrent requests share one call, keys split batches, progress arrives in order,
cancellation leaves the queue or stops a batch nobody waits for, errors reach every caller."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from services.workers.batching import Batch, BatchCancelled, BatchingConfig, Done, MicroBatcher


class Model:
    """Doubles each request; records its batches; reports one event per step; can be held at a gate."""

    def __init__(self, steps: int = 3) -> None:
        self.steps, self.calls, self.stopped_at = steps, [], None
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, batch: Batch[Any]) -> Sequence[Any]:
        self.calls.append(list(batch.requests))
        for k in range(self.steps):
            self.gate.wait(5)
            try:
                batch.check()
            except BatchCancelled:
                self.stopped_at = k
                raise
            for i in range(len(batch)):
                batch.progress(i, ("step", k + 1))
        if any(r == "boom" for r in batch.requests):
            raise RuntimeError("model exploded")
        return [r * 2 for r in batch.requests]


async def collect(b: MicroBatcher[Any, Any], req: Any) -> list[Any]:
    return [ev async for ev in b.submit(req)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_progress_arrives_in_order() -> None:
    async def go() -> None:
        model = Model()
        b = MicroBatcher(model, BatchingConfig(max_batch_size=8, max_wait_ms=50))
        outs = await asyncio.gather(*(collect(b, i) for i in range(5)))
        assert model.calls == [[0, 1, 2, 3, 4]]
        for i, events in enumerate(outs):
            assert events[:-1] == [("step", 1), ("step", 2), ("step", 3)]
            assert events[-1] == Done(i * 2, 5, events[-1].seconds)
        await b.close()
    run(go())


def test_batches_are_capped_and_split_by_key() -> None:
    async def go() -> None:
        model = Model(steps=1)
        b = MicroBatcher(model, BatchingConfig(max_batch_size=3, max_wait_ms=50), key=lambda r: r % 2)
        outs = await asyncio.gather(*(collect(b, i) for i in range(8)))
        assert sorted(map(sorted, model.calls)) == [[0, 2, 4], [1, 3, 5], [6], [7]]
        assert all(call == [r for r in call if r % 2 == call[0] % 2] for call in model.calls)
        assert [o[-1].result for o in outs] == [i * 2 for i in range(8)]
        await b.close()
    run(go())


def test_a_lone_request_runs_after_max_wait() -> None:
    async def go() -> None:
        model = Model(steps=1)
        b = MicroBatcher(model, BatchingConfig(max_batch_size=8, max_wait_ms=1))
        assert (await collect(b, 7))[-1].result == 14
        assert (await collect(b, 8))[-1].batch_size == 1
        assert model.calls == [[7], [8]]
        await b.close()
    run(go())


def test_cancelled_requests_leave_the_queue_and_a_deserted_batch_stops() -> None:
    async def go() -> None:
        model = Model(steps=50)
        model.gate.clear()  # hold the first batch in its first step
        b = MicroBatcher(model, BatchingConfig(max_batch_size=1, max_wait_ms=0))
        first = asyncio.create_task(collect(b, 1))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(collect(b, 2))  # waits behind the running batch
        await asyncio.sleep(0.05)
        queued.cancel()
        first.cancel()
        await asyncio.gather(first, queued, return_exceptions=True)
        model.gate.set()
        await asyncio.sleep(0.2)
        assert model.calls == [[1]]  # request 2 never ran
        assert model.stopped_at is not None and model.stopped_at < 5  # stopped at its next step, not at 50
        assert (await collect(b, 3))[-1].result == 6  # the batcher still serves
        await b.close()
    run(go())


def test_a_failed_batch_fails_each_caller() -> None:
    async def go() -> None:
        b = MicroBatcher(Model(steps=1), BatchingConfig(max_batch_size=4, max_wait_ms=30))
        results = await asyncio.gather(collect(b, "boom"), collect(b, "ok"), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
        await b.close()
    run(go())


@pytest.mark.parametrize("kw", [{"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_wait_ms": 5000}])
def test_config_is_validated(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="batching"):
        BatchingConfig(**kw)  # type: ignore[arg-type]
