"""The job store's queue operations the dispatcher and the metrics use, on a real redis-server: what
each leaves in the queue's stream and consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from services.queue.jobstore import JobStore
from services.queue.kinds import JobKind, Service
from services.queue.redis_server import RedisServer
from tessera.v1 import jobs_pb2, text_pb2

SPEC = JobKind.TEXT.spec(text_pb2.TextRequest(model="echo", prompt="a b c"))


@contextlib.asynccontextmanager
async def _store(server: RedisServer) -> AsyncIterator[JobStore]:
    store = JobStore.from_url(server.url, prefix=f"s{os.urandom(4).hex()}:")
    try:
        await store.ensure_group(Service.TEXT)
        yield store
    finally:
        await store.aclose()


def test_queue_stats_count_waiting_jobs_not_claimed_ones(redis_server: RedisServer) -> None:
    async def go() -> None:
        async with _store(redis_server) as store:
            assert await store.queue_stats(Service.TEXT) == (0, 0.0)
            for _ in range(3):
                await store.submit("alice", Service.TEXT, SPEC)
            waiting, age = await store.queue_stats(Service.TEXT)
            assert waiting == 3 and 0.0 <= age < 60
            taken = await store.read_queue(Service.TEXT, "d1", 2, 10)
            assert len(taken) == 2 and (await store.queue_stats(Service.TEXT))[0] == 1
    asyncio.run(go())


def test_requeue_autoclaim_and_heartbeat(redis_server: RedisServer) -> None:
    async def go() -> None:
        async with _store(redis_server) as store:
            jid, _ = await store.submit("alice", Service.TEXT, SPEC)
            [(eid, fields)] = await store.read_queue(Service.TEXT, "d1", 1, 10)
            assert fields[b"job_id"].decode() == jid
            await asyncio.sleep(0.05)
            await store.heartbeat(Service.TEXT, "d1", [eid])  # fresh again: nobody may reclaim it
            assert await store.autoclaim(Service.TEXT, "d2", 40, 10) == []
            await asyncio.sleep(0.05)
            [(taken, tfields)] = await store.autoclaim(Service.TEXT, "d2", 40, 10)  # d1 went quiet
            assert taken == eid and tfields[b"job_id"].decode() == jid
            pending = await store.r.xpending_range(store.queue_key(Service.TEXT), "dispatchers", "-", "+", 10)
            assert [p["consumer"] for p in pending] == [b"d2"]
            await store.requeue(Service.TEXT, jid)  # a fresh entry for the same job...
            await store.done(Service.TEXT, eid)  # ...and the old one retired
            [(new, nfields)] = await store.read_queue(Service.TEXT, "d3", 10, 10)
            assert new != eid and nfields == {b"job_id": jid.encode(), b"service": b"text"}
            await store.done(Service.TEXT, new)
            assert await store.autoclaim(Service.TEXT, "d2", 0, 10) == []  # deleted entries are left out
    asyncio.run(go())


def test_cancelled_jobs_and_past_events(redis_server: RedisServer) -> None:
    async def go() -> None:
        async with _store(redis_server) as store:
            jid, _ = await store.submit("alice", Service.TEXT, SPEC)
            heard: list[str] = []

            async def listen() -> None:
                async for job_id in store.cancelled_jobs():
                    heard.append(job_id)
                    return

            task = asyncio.create_task(listen())
            for _ in range(100):  # subscribed before the cancel is published (pub/sub keeps nothing)
                ((_, n),) = await store.r.pubsub_numsub(store.cancel_channel)
                if n:
                    break
                await asyncio.sleep(0.02)
            assert await store.cancel(jid)
            await asyncio.wait_for(task, 5)
            assert heard == [jid]
            kinds = [ev.WhichOneof("kind") for ev in await store.past_events(jid)]
            assert kinds == ["state", "state", "error"]
            assert (await store.past_events(jid))[1].state == jobs_pb2.JOB_STATE_CANCELLED
    asyncio.run(go())
