"""Diagnostics inside the gateway child of a loadtest stack (loadtest.children), switched on at
run time so the measured runs are never slowed down by instrumentation: a Probe that counts and times
every Redis command and asyncio.sleep, and a summary of a cProfile of the event-loop thread.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Probe:
    """Counts and times the gateway process's Redis commands and sleeps (diagnostics only).

    Patches redis.asyncio's Redis.execute_command / Pipeline.execute and asyncio.sleep while on.
    Times are wall times seen by the awaiting coroutine, so under load they include event-loop
    queueing, not only the Redis round trip."""

    def __init__(self, script_names: dict[str, str]) -> None:
        self.script_names = script_names
        self.calls: dict[str, list[float]] = {}  # name -> [count, seconds, entries returned]
        self.sleeps: dict[str, list[float]] = {}  # requested delay -> [count, seconds]
        self._saved: list[tuple[Any, str, Any]] = []

    def _name(self, args: tuple[Any, ...]) -> str:
        words = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in args[:2]]
        cmd = words[0].upper()
        if cmd == "EVALSHA":
            return f"EVALSHA {self.script_names.get(words[1], words[1][:8])}"
        if cmd in ("XREAD", "XREADGROUP") and any(a in ("BLOCK", b"BLOCK") for a in args):
            return f"{cmd} (blocking)"
        return cmd

    def _add(self, name: str, seconds: float, entries: int = 0) -> None:
        c = self.calls.setdefault(name, [0, 0.0, 0])
        c[0] += 1
        c[1] += seconds
        c[2] += entries

    def on(self) -> None:
        if self._saved:
            return
        import redis.asyncio.client as rc

        probe = self
        orig_exec, orig_pipe, orig_sleep = rc.Redis.execute_command, rc.Pipeline.execute, asyncio.sleep

        async def execute_command(self: Any, *args: Any, **options: Any) -> Any:
            t = time.perf_counter()
            result = await orig_exec(self, *args, **options)
            # XREAD replies: [[stream, [entries...]], ...] -> count the events delivered.
            entries = sum(len(s[1]) for s in result) if args[0] in ("XREAD", "XREADGROUP") and result else 0
            probe._add(probe._name(args), time.perf_counter() - t, entries)
            return result

        async def execute(self: Any, raise_on_error: bool = True) -> Any:
            name = "PIPELINE[" + " ".join(str(c[0][0]).upper() for c in self.command_stack) + "]"
            t = time.perf_counter()
            try:
                return await orig_pipe(self, raise_on_error)
            finally:
                probe._add(name, time.perf_counter() - t)

        async def sleep(delay: float, result: Any = None) -> Any:
            if delay >= 0.001:
                s = probe.sleeps.setdefault(f"{delay:g}", [0, 0.0])
                s[0] += 1
                s[1] += delay
            return await orig_sleep(delay, result)

        from services.queue.resp import FastRedis

        orig_fast = FastRedis.execute

        async def fast_execute(self: Any, *args: Any) -> Any:  # the job store's scripts (pipelined client)
            t = time.perf_counter()
            try:
                return await orig_fast(self, *args)
            finally:
                probe._add(probe._name(args), time.perf_counter() - t)

        self._saved = [(rc.Redis, "execute_command", orig_exec), (rc.Pipeline, "execute", orig_pipe),
                       (asyncio, "sleep", orig_sleep), (FastRedis, "execute", orig_fast)]
        FastRedis.execute = fast_execute  # type: ignore[method-assign]
        rc.Redis.execute_command = execute_command  # type: ignore[method-assign]
        rc.Pipeline.execute = execute  # type: ignore[method-assign]
        asyncio.sleep = sleep  # type: ignore[assignment]

    def off(self) -> None:
        for owner, name, value in self._saved:
            setattr(owner, name, value)
        self._saved = []

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "sleeps": self.sleeps}


_AREAS = (("redis-py", "redis/"), ("pipelined redis", "services/queue/resp.py"), ("grpc", "grpc/"),
          ("protobuf", "google/protobuf"), ("tessera services", "services/"), ("asyncio", "asyncio/"))


def profile_report(prof: cProfile.Profile, wall_s: float, n: int) -> dict[str, Any]:
    """Top n functions by own time, own time summed by area (built-ins such as socket.send count as
    "C built-ins"), and how busy the event-loop thread was (callback time / wall time)."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows, areas, busy = [], dict.fromkeys([a for a, _ in _AREAS] + ["C built-ins", "other"], 0.0), 0.0
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        rows.append([f"{short}:{line}({func})", ncalls, tottime, cumtime])
        area = "C built-ins" if filename == "~" else next((a for a, m in _AREAS if m in filename), "other")
        areas[area] += tottime
        if filename.endswith("asyncio/events.py") and func == "_run":
            busy = cumtime  # every callback and task step of the loop runs inside Handle._run
    rows.sort(key=lambda r: r[2], reverse=True)
    return {"top": rows[:n], "areas": areas, "wall_s": wall_s, "busy_s": busy}

