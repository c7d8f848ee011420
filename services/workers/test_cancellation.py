"""Cancelling a call by its call id on whichever replica runs it (services/workers/cancellation.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.workers.cancellation import CallRegistry, CancelBoard
from services.workers.protocol import CALL_ID_METADATA, call_id_of


async def _tracked(reg: CallRegistry, call_id: str, started: asyncio.Event) -> str:
    with reg.track(call_id):
        started.set()
        await asyncio.sleep(60)
    return "ran to the end"


def test_a_tracked_call_is_cancelled_by_id_and_forgotten_when_it_ends() -> None:
    async def go() -> None:
        reg = CallRegistry()
        started = asyncio.Event()
        task = asyncio.create_task(_tracked(reg, "c1", started))
        await started.wait()
        assert set(reg.running) == {"c1"}
        assert not reg.cancel_here("other")  # not running here: nothing happens to c1
        assert not task.done()
        assert reg.cancel_here("c1")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert reg.running == {}
        assert not reg.cancel_here("c1")  # already cancelled: no second cancel

        # A call that ends by itself leaves the registry too.
        with reg.track("c2"):
            assert "c2" in reg.running
        assert reg.running == {}
    asyncio.run(go())


def test_a_cancel_that_overtakes_its_call_cancels_it_as_it_starts() -> None:
    async def go() -> None:
        reg = CallRegistry()
        assert not reg.cancel_here("early")
        started = asyncio.Event()
        task = asyncio.create_task(_tracked(reg, "early", started))
        with pytest.raises(asyncio.CancelledError):
            await task
        # A call without an id (a caller that sent no metadata) is not tracked at all.
        with reg.track(""):
            assert reg.running == {}
    asyncio.run(go())


def test_call_id_comes_from_the_metadata() -> None:
    assert call_id_of([("application", "text"), (CALL_ID_METADATA, "abc")]) == "abc"
    assert call_id_of([("application", "text")]) == ""
    assert call_id_of(None) == ""


def test_board_hands_each_waiter_what_was_posted_after_what_it_saw() -> None:
    async def go() -> None:
        board = CancelBoard()
        epoch, version, ids = await board.wait("", 0, timeout_s=0.01)  # nothing yet: times out empty
        assert (epoch, version, ids) == (board.epoch, 0, [])
        waiter = asyncio.create_task(board.wait(epoch, 0, timeout_s=5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await board.post("a")
        assert await asyncio.wait_for(waiter, 1) == (epoch, 1, ["a"])
        await board.post("b")
        assert (await board.wait(epoch, 1, timeout_s=0.01))[1:] == (2, ["b"])
        # A waiter that knew an older board (another epoch) reads this one from the start.
        assert (await board.wait("old-epoch", 2, timeout_s=0.01))[2] == ["a", "b"]
    asyncio.run(go())


def test_a_cancel_reaches_the_replica_running_the_call_through_the_board(serve_cluster: Any) -> None:
    """Two registries stand in for two replicas, with the cluster's real board actor between them:
    the one asked (not running the call) posts it, the one running it cancels it."""
    async def go() -> None:
        asked, runner = CallRegistry(), CallRegistry()
        runner.start()
        try:
            started = asyncio.Event()
            task = asyncio.create_task(_tracked(runner, "remote-call", started))
            await started.wait()
            await asyncio.sleep(0.5)  # the runner's long poll is waiting on the board
            assert not await asyncio.wait_for(asked.cancel("remote-call", "job-1"), 30)
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
            assert "remote-call" in runner.cancelled and runner.running == {}
        finally:
            await runner.stop()
    asyncio.run(go())
