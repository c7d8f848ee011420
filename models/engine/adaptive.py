"""Load-adaptive D2F: under load, spend less compute on speculation.

D2F keeps several blocks in flight, and every step forwards all of them, mostly-masked ones
included: ~5-6 window tokens per generated token (d2f.md §3.3, docs/batching.md). Alone, that
work is nearly free (a forward of 64 tokens costs little more than one of 16: fixed costs
dominate). In a full batch the forward is compute-bound and every speculative token costs as much
as a useful one. So when the replica is busy the scheduler goes lean: it appends a block only
when the last one is mostly decoded (tau_add), caps the blocks in flight, and admits new
sequences with a smaller block (their window); when the load falls, it goes back to full
pipelining. Hysteresis (busy_at > calm_at) keeps it from flapping.

A lean request decodes differently from the same request alone, so its text depends on the load
it met: resumption (skip_tokens), which replays a request and relies on the replay producing the
same tokens, is only exact for requests decoded in the same mode. That is why the policy is off
by default (EngineConfig.adaptive) and docs/batching.md reports what it buys.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class AdaptivePolicy:
    enabled: bool = False
    busy_at: int = 8  # go lean when this many sequences are running or waiting
    calm_at: int = 4  # back to full pipelining at or below this many
    tau_add: float = 0.9  # lean: a new block only once the last one is this decoded (or the request's, if larger)
    max_active: int = 2  # lean: at most this many blocks in flight (0 = no cap)
    block_size: int = 16  # lean: the block of sequences admitted while lean (0 = the request's own)

    def __post_init__(self) -> None:
        if not 0 <= self.calm_at < self.busy_at:
            raise ValueError(f"need 0 <= calm_at < busy_at, got calm_at={self.calm_at} busy_at={self.busy_at}")
        if not 0.0 <= self.tau_add <= 1.0:
            raise ValueError(f"tau_add must be in [0, 1], got {self.tau_add}")
        if self.max_active < 0 or self.block_size < 0:
            raise ValueError("max_active and block_size must be >= 0")

    def lean(self, load: int, was_lean: bool) -> bool:
        """Whether the next step runs lean, for `load` sequences running or waiting."""
        if not self.enabled:
            return False
        return load > self.calm_at if was_lean else load >= self.busy_at
