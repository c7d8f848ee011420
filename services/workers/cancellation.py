"""Cancelling a worker call on whichever replica runs it (WorkerControlService.CancelCall).

Why this exists: Ray Serve's gRPC proxy (2.60) does not always pass a caller's cancellation on to
the replica. By our reading of its code, one that lands while the proxy waits for the replica's
next message cancels the replica's handler, but one that lands while the proxy writes a message to
the caller cancels the proxy's own task outside the response generator: the replica is never told
and the model decodes to the end for nobody. Measured with the tiny text model (24 slow generations,
each cancelled on the channel after 1-3 messages): 6 kept decoding, and CancelCall stopped each of
those 6. So the dispatcher also names the call it gave up on, by the `tessera-call-id` metadata it
sent it with, and any replica of the application answers:

- every replica keeps its running calls by call id (`CallRegistry.track`, used by
  serving.handled_stream);
- the replica the proxy routes CancelCall to cancels the call if it runs it; else it posts the id to
  the cluster's `CancelBoard` (one named Ray actor), which every replica long-polls, and the replica
  running the call cancels it there;
- a replica remembers recent cancellations, so a call whose cancel overtook it is cancelled as soon
  as it starts.

Cancelling the call's task is what Serve itself does on a proper cancellation: the engine's stream
is closed and the decoding loop stops at its next forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterator

import ray

log = logging.getLogger(__name__)
BOARD_NAME, BOARD_NAMESPACE = "tessera-cancel-board", "tessera"
KEEP = 4096  # cancellations a board (and each replica) remembers: far more than can be in flight
POLL_TIMEOUT_S = 30.0


class CancelBoard:
    """Recently cancelled call ids, numbered; replicas long-poll for the ones after what they saw.
    `epoch` changes when the board is recreated, so a replica knows to read it from the start."""

    def __init__(self) -> None:
        self.epoch = os.urandom(8).hex()
        self.version = 0
        self.recent: deque[tuple[int, str]] = deque(maxlen=KEEP)
        self.changed = asyncio.Event()

    async def post(self, call_id: str) -> int:
        self.version += 1
        self.recent.append((self.version, call_id))
        self.changed.set()
        self.changed = asyncio.Event()  # waiters hold the one just set
        return self.version

    async def wait(self, epoch: str, since: int, timeout_s: float = POLL_TIMEOUT_S) -> tuple[str, int, list[str]]:
        """(epoch, version, call ids posted after `since`), once there are any or after timeout_s."""
        if epoch != self.epoch:
            since = 0
        if self.version <= since:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return self.epoch, self.version, [c for v, c in self.recent if v > since]


def cancel_board() -> ray.actor.ActorHandle:
    """The cluster's board: created by whichever replica asks first, detached so that it outlives the
    replicas that come and go (it holds no resources: num_cpus=0)."""
    return (ray.remote(CancelBoard)
            .options(name=BOARD_NAME, namespace=BOARD_NAMESPACE, lifetime="detached", get_if_exists=True,
                     num_cpus=0, max_concurrency=1000)
            .remote())


class CallRegistry:
    """One replica's running calls by call id, and its side of the board."""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Task[object]] = {}
        self.cancelled: OrderedDict[str, None] = OrderedDict()  # recent ids, whether or not they ran here
        self._board: ray.actor.ActorHandle | None = None
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start listening to the board (call from the replica's event loop, e.g. in __init__)."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None

    @contextlib.contextmanager
    def track(self, call_id: str) -> Iterator[None]:
        """While the block runs, the current task is the call `call_id` (no-op without an id)."""
        task = asyncio.current_task()
        if not call_id or task is None:
            yield
            return
        if call_id in self.cancelled:  # the cancel overtook the call
            task.cancel()
        self.running[call_id] = task
        try:
            yield
        finally:
            if self.running.get(call_id) is task:
                del self.running[call_id]

    def cancel_here(self, call_id: str) -> bool:
        """Cancel the call if this replica runs it; remember the id either way."""
        self.cancelled[call_id] = None
        while len(self.cancelled) > KEEP:
            self.cancelled.popitem(last=False)
        task = self.running.pop(call_id, None)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def cancel(self, call_id: str, job_id: str = "") -> bool:
        """Cancel here, or pass it on to the other replicas; True when it ran here."""
        if not call_id:
            return False
        if self.cancel_here(call_id):
            log.info("cancelled call %s (job %s)", call_id, job_id)
            return True
        await self._get_board().post.remote(call_id)
        return False

    def _get_board(self) -> ray.actor.ActorHandle:
        if self._board is None:
            self._board = cancel_board()
        return self._board

    async def _listen(self) -> None:
        epoch, since, backoff = "", 0, 0.5
        while True:
            try:
                epoch_now, since, ids = await self._get_board().wait.remote(epoch, since)
                if epoch_now != epoch and epoch:
                    log.warning("cancel board was recreated; reading it from the start")
                epoch = epoch_now
                for call_id in ids:
                    if self.cancel_here(call_id):
                        log.info("cancelled call %s (posted by another replica)", call_id)
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the board died (node lost): make a new one and read it from the start
                log.warning("cancel board unavailable (%s); retrying in %.1fs", e, backoff)
                self._board = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
