"""When to retry a failed call, and after how long: the decisions both clients share.

gRPC's own retry policy gives up after a fixed number of attempts (about 1.75 s with ours), shorter than
a gateway restart. The clients instead loop on this module's verdict: UNAVAILABLE is retried with
exponential backoff and jitter for up to a time budget, RESOURCE_EXHAUSTED after the server's
RetryInfo delay; never past the call's own deadline. Every SDK call reuses its one request (and so its
one idempotency key) on each attempt, so a repeated submission attaches to the job the first one made.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from tessera.errors import TesseraError, from_rpc_error

DEFAULT_RETRY_BUDGET_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How persistently a client retries (see `Retrier`)."""

    budget_s: float = DEFAULT_RETRY_BUDGET_S
    rate_limited: bool = True
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.budget_s < 0:
            raise ValueError(f"retry_budget_s must be >= 0, got {self.budget_s}")


class Retrier:
    """The retry state of one SDK call (all of a stream's re-opens included).

    The budget runs from the first failure since the call last made progress: a stream that received
    messages again starts a fresh one, so a long generation can ride out several restarts while a dead
    gateway still fails fast. The deadline is fixed when the call starts and bounds every attempt.
    """

    def __init__(self, policy: RetryPolicy, timeout_s: float, clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self.deadline = clock() + timeout_s
        self._failing_since: float | None = None
        self._backoff = policy.initial_backoff_s

    def timeout(self) -> float:
        """Seconds left until the call's deadline: the timeout of the next attempt."""
        return max(self.deadline - self._clock(), 0.0)

    def progressed(self) -> None:
        """The call got somewhere (a stream received a message): later failures get a fresh budget."""
        self._failing_since = None
        self._backoff = self._policy.initial_backoff_s

    def delay_after(self, err: TesseraError) -> float | None:
        """Seconds to wait before the next attempt after `err`, or None to give up and raise it."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        budget_left = self._failing_since + self._policy.budget_s - now
        if budget_left <= 0:
            return None
        delay = self._delay(err, budget_left)
        # An attempt that could only start after the deadline would fail with DEADLINE_EXCEEDED and
        # hide the real cause: raise the real error now instead.
        if delay is None or now + delay >= self.deadline:
            return None
        return delay

    def delay_or_raise(self, e: grpc.RpcError) -> float:
        """`delay_after` for a raw gRPC failure; raises its TesseraError when it is not retried."""
        err = from_rpc_error(e)
        delay = self.delay_after(err)
        if delay is None:
            raise err from e
        return delay

    def _delay(self, err: TesseraError, budget_left: float) -> float | None:
        hint = err.retry_delay_s
        if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only the server knows when the quota refills; without its hint a retry is a guess that adds
            # load exactly when there is too much. Coming back before the hint would only be refused again.
            if not self._policy.rate_limited or hint is None or hint > budget_left:
                return None
            return hint
        if err.code != grpc.StatusCode.UNAVAILABLE:
            return None
        backoff = self._backoff
        self._backoff = min(backoff * self._policy.multiplier, self._policy.max_backoff_s)
        # Jitter (50-100 % of the backoff) spreads out the clients a restart disconnected all at once.
        delay = hint if hint is not None else backoff * (0.5 + self._rand() / 2)
        # The last attempt lands at the end of the budget rather than being skipped.
        return min(delay, budget_left)
