"""The pipelined Redis client (services/queue/resp.py) against a real redis-server: replies reach the
right callers however many are in flight, a caller that gives up does not shift the others, scripts
survive a script-cache flush, and a restart fails what was in flight and then recovers."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis import exceptions as rx

from services.queue.redis_server import RedisServer
from services.queue.resp import FastRedis, FastScript


def test_concurrent_commands_get_their_own_replies(redis_server: RedisServer) -> None:
    async def go() -> None:
        r = FastRedis(redis_server.url)
        key = f"resp:{os.urandom(4).hex()}"
        # 500 commands issued in one loop iteration go out in one write; each caller gets its reply.
        got = await asyncio.gather(*(r.execute("ECHO", f"m{i}") for i in range(500)))
        assert got == [f"m{i}".encode() for i in range(500)]
        incs = await asyncio.gather(*(r.execute("INCR", key) for _ in range(100)))
        assert sorted(incs) == list(range(1, 101))
        assert await r.execute("GET", key) == b"100"
        assert await r.execute("GET", f"{key}:missing") is None
        with pytest.raises(rx.ResponseError, match="WRONGTYPE"):
            await r.execute("LPUSH", key, "x")
        assert await r.execute("ECHO", "still in step") == b"still in step"  # an error reply keeps the order
        await r.aclose()
    asyncio.run(go())


def test_a_caller_that_gives_up_does_not_shift_the_replies(redis_server: RedisServer) -> None:
    async def go() -> None:
        r = FastRedis(redis_server.url)
        key = f"resp:empty:{os.urandom(4).hex()}"
        slow = asyncio.create_task(r.execute("BLPOP", key, "0.3"))  # answers (nil) after 0.3 s
        await asyncio.sleep(0.05)
        nxt = asyncio.create_task(r.execute("ECHO", "after"))  # queued behind BLPOP on the connection
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await nxt == b"after"  # not BLPOP's nil
        assert await r.execute("ECHO", "again") == b"again"
        await r.aclose()
    asyncio.run(go())


def test_a_silent_server_times_out_and_the_next_call_reconnects(redis_server: RedisServer) -> None:
    async def go() -> None:
        r = FastRedis(redis_server.url, timeout_s=0.2)
        with pytest.raises(rx.TimeoutError):
            await r.execute("BLPOP", f"resp:none:{os.urandom(4).hex()}", "1")
        assert await r.execute("ECHO", "fresh") == b"fresh"
        await r.aclose()
    asyncio.run(go())


def test_scripts_are_loaded_again_after_the_cache_is_flushed(redis_server: RedisServer) -> None:
    async def go() -> None:
        r = FastRedis(redis_server.url)
        script = FastScript(r, "return {KEYS[1], ARGV[1] + 1}")
        assert await script(keys=["k"], args=[41]) == [b"k", 42]
        await r.execute("SCRIPT", "FLUSH")
        results = await asyncio.gather(*(script(keys=[f"k{i}"], args=[i]) for i in range(20)))
        assert results == [[f"k{i}".encode(), i + 1] for i in range(20)]
        await r.aclose()
    asyncio.run(go())


def test_restart_fails_in_flight_commands_then_recovers() -> None:
    async def go(server: RedisServer) -> None:
        r = FastRedis(server.url, timeout_s=2.0)
        assert await r.execute("SET", "k", "v") == b"OK"
        blocked = asyncio.create_task(r.execute("BLPOP", "nothing", "5"))
        await asyncio.sleep(0.1)
        server.stop()
        with pytest.raises(rx.ConnectionError):
            await blocked
        with pytest.raises(rx.ConnectionError, match="cannot connect"):
            await r.execute("PING")
        server.start()
        assert await r.execute("PING") == b"PONG"
        await r.aclose()

    with RedisServer() as server:
        asyncio.run(go(server))


def test_urls_with_database_and_password_are_honoured(redis_server: RedisServer) -> None:
    async def go() -> None:
        base = redis_server.url.rsplit("/", 1)[0]
        r = FastRedis(f"{base}/3")
        await r.execute("SET", "resp:db", "three")
        plain = FastRedis(f"{base}/0")
        assert await plain.execute("GET", "resp:db") is None
        assert await r.execute("GET", "resp:db") == b"three"
        with pytest.raises(rx.ResponseError):  # this server has no password: AUTH is refused
            await FastRedis(redis_server.url.replace("redis://", "redis://:secret@")).execute("PING")
        await r.aclose()
        await plain.aclose()
    with pytest.raises(ValueError, match="scheme"):
        FastRedis("http://localhost:6379")
    asyncio.run(go())


def test_a_subscription_gets_messages_and_reports_its_loss() -> None:
    async def go(server: RedisServer) -> None:
        r = FastRedis(server.url)
        got: list[bytes] = []
        sub = await r.subscribe("chan", got.append)
        sub2 = await r.subscribe("other", lambda _m: 1 / 0)  # a failing handler does not end it
        for i in range(50):
            await r.execute("PUBLISH", "chan", f"m{i}")
        assert await r.execute("PUBLISH", "other", "x") == 1
        assert await r.execute("PUBLISH", "other", "y") == 1  # still subscribed
        for _ in range(100):  # the messages arrive on the subscription's own socket
            if len(got) == 50:
                break
            await asyncio.sleep(0.01)
        assert got == [f"m{i}".encode() for i in range(50)]
        server.stop()
        with pytest.raises(rx.ConnectionError):
            await asyncio.wait_for(sub.closed, 5)
        server.start()
        sub3 = await r.subscribe("chan", got.append)
        await r.execute("PUBLISH", "chan", "back")
        await asyncio.sleep(0.05)
        assert got[-1] == b"back"
        for s in (sub, sub2, sub3):
            s.close()
        await r.aclose()

    with RedisServer() as server:
        asyncio.run(go(server))


def test_a_server_still_loading_its_data_reads_as_unavailable() -> None:
    """A restarted Redis answers LOADING until it has replayed its append-only file: Redis not being there
    yet (redis-py says BusyLoadingError, a ConnectionError), not a failed command. A submission then gets
    UNAVAILABLE, which clients retry with the same idempotency key, not INTERNAL (python -m loadtest.chaos
    saw one GenerateStream fail with INTERNAL right after a Redis restart)."""
    import grpc
    import hiredis

    from services.common.metrics import Metrics
    from services.gateway.config import GatewayConfig
    from services.gateway.dataplane import DataPlane
    from services.gateway.rpc_errors import RpcError
    from services.queue.jobstore import JobStore
    from tessera.v1 import jobs_pb2, text_pb2

    async def loading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        commands = hiredis.Reader()
        while data := await reader.read(1 << 16):
            commands.feed(data)
            while commands.gets() is not False:  # one error reply per command, as Redis sends while loading
                writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
        writer.close()

    async def go() -> None:
        server = await asyncio.start_server(loading, "127.0.0.1", 0)
        url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
        r = FastRedis(url)
        with pytest.raises(rx.BusyLoadingError):
            await r.execute("PING")
        await r.aclose()
        store = JobStore.from_url(url)
        plane = DataPlane(GatewayConfig(), store, Metrics())
        with pytest.raises(RpcError) as ei:
            await plane.submit("alice", jobs_pb2.JobSpec(text=text_pb2.TextRequest(prompt="a b")))
        assert ei.value.code == grpc.StatusCode.UNAVAILABLE
        await store.aclose()
        server.close()
        await server.wait_closed()
    asyncio.run(go())
