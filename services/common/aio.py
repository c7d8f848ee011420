"""asyncio helpers shared by the services."""

from __future__ import annotations

import asyncio


async def cancel_all(tasks: list[asyncio.Task[None]], timeout_s: float = 5.0) -> None:
    """Cancel tasks and wait for them. Cancels again while any survive: on Python 3.11
    asyncio.wait_for (used by redis-py for every command) can swallow a cancellation that lands
    just as its operation completes, and the task then carries on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending and loop.time() < deadline:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
