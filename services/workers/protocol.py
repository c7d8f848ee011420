"""The engine protocol every worker app drives (after Ray Serve LLM's `LLMEngine`), and the request
conventions all families share.

The worker server (server.py) owns Serve concerns: gRPC status codes, metrics, cancellation, health
and shutdown plumbing. An engine owns the model and maps the family's requests to it: each RPC a
family serves is one engine method taking the request proto, an async generator for a streaming RPC
(so a cancelled call stops the engine at its next await) or a plain method for a unary one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# Metadata naming one dispatcher -> worker call, so WorkerControlService.CancelCall can find it on
# whichever replica runs it (services/workers/cancellation.py).
CALL_ID_METADATA = "tessera-call-id"


def call_id_of(metadata: Sequence[tuple[str, str]] | None) -> str:
    """The call id a call was sent with ("" without one)."""
    return next((v for k, v in metadata or () if k == CALL_ID_METADATA), "")


class InvalidRequestError(ValueError):
    """A request the engine refuses as given (the worker answers INVALID_ARGUMENT with this message)."""


@runtime_checkable
class WorkerEngine(Protocol):
    """The lifecycle every engine has; its RPC methods are named by the family (family.py)."""

    async def start(self) -> None:
        """Load the model; called once, before any request."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve (Serve then replaces the replica)."""
        ...

    async def shutdown(self) -> None:
        """Stop model threads; running streams have been closed already."""
        ...
