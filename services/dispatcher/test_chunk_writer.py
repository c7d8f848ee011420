"""The dispatcher's chunk writer: batching while a write is in flight, fencing, and the tail that
rides along with the result."""

from __future__ import annotations

import asyncio

import pytest

from services.dispatcher.runners import _ChunkWriter


class GatedStore:
    """Records append_chunks calls; each call waits until the test opens the gate."""

    def __init__(self, accept: bool = True) -> None:
        self.calls: list[list[bytes]] = []
        self.gate = asyncio.Event()
        self.accept = accept

    async def append_chunks(self, job_id: str, attempt: int, events: list[bytes], tokens: int,
                            progress: float) -> bool:
        self.calls.append(list(events))
        await self.gate.wait()
        return self.accept


def test_chunks_arriving_during_a_write_go_out_together() -> None:
    async def go() -> None:
        store = GatedStore()
        w = _ChunkWriter(store, "j", 1, max_tokens=10)  # type: ignore[arg-type]
        w.add(b"a", 1)
        await asyncio.sleep(0)  # the first write starts and blocks on the gate
        for i, e in enumerate((b"b", b"c", b"d"), start=2):
            w.add(e, i)
        store.gate.set()
        await asyncio.sleep(0.01)
        assert store.calls == [[b"a"], [b"b", b"c", b"d"]]
        assert await w.drain() == []
    asyncio.run(go())


def test_drain_returns_unwritten_chunks_for_the_final_call() -> None:
    async def go() -> None:
        store = GatedStore()
        w = _ChunkWriter(store, "j", 1, max_tokens=10)  # type: ignore[arg-type]
        w.add(b"a", 1)
        await asyncio.sleep(0)
        w.add(b"b", 2)
        drained = asyncio.create_task(w.drain())
        await asyncio.sleep(0)
        store.gate.set()
        assert await drained == [b"b"]  # not written separately: it goes with the result
        assert store.calls == [[b"a"]]
    asyncio.run(go())


def test_a_rejected_write_marks_the_attempt_lost() -> None:
    async def go() -> None:
        store = GatedStore(accept=False)
        store.gate.set()
        w = _ChunkWriter(store, "j", 1, max_tokens=10)  # type: ignore[arg-type]
        w.add(b"a", 1)
        await asyncio.sleep(0.01)
        assert w.lost
        w.add(b"b", 2)
        await asyncio.sleep(0.01)
        assert store.calls == [[b"a"]]  # nothing more is written once fenced out
    asyncio.run(go())


def test_a_failed_write_surfaces_on_the_next_chunk() -> None:
    class Broken(GatedStore):
        async def append_chunks(self, *a: object, **k: object) -> bool:
            raise ConnectionError("redis gone")

    async def go() -> None:
        w = _ChunkWriter(Broken(), "j", 1, max_tokens=10)  # type: ignore[arg-type]
        w.add(b"a", 1)
        await asyncio.sleep(0.01)
        with pytest.raises(ConnectionError):
            w.add(b"b", 2)
    asyncio.run(go())


def test_lingering_write_batches_back_to_back_events_and_gives_way_to_the_result() -> None:
    async def go() -> None:
        store = GatedStore()
        store.gate.set()
        w = _ChunkWriter(store, "j", 1, max_tokens=10, linger_s=0.05)  # type: ignore[arg-type]
        for i, e in enumerate((b"a", b"b", b"c"), start=1):
            w.add(e, i)
            await asyncio.sleep(0)
        assert store.calls == []  # still lingering
        await asyncio.sleep(0.1)
        assert store.calls == [[b"a", b"b", b"c"]]  # one write for all three
        w2 = _ChunkWriter(store, "j", 1, max_tokens=10, linger_s=0.05)  # type: ignore[arg-type]
        w2.add(b"x", 1)
        w2.add(b"y", 2)
        assert await w2.drain() == [b"x", b"y"]  # ended within the linger: everything rides with the result
        await asyncio.sleep(0.1)
        assert store.calls == [[b"a", b"b", b"c"]]  # and nothing was written twice
    asyncio.run(go())
