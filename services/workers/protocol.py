"""The engine protocol every worker app drives (after Ray Serve LLM's `LLMEngine`), and the request
conventions all families share.

The worker server (server.py) owns Serve concerns: gRPC status codes, metrics, cancellation, health
and shutdown plumbing. An engine owns the model and maps the family's requests to it: each RPC a
family serves is one engine method taking the request proto, an async generator for a streaming RPC
(so a cancelled call stops the engine at its next await) or a plain method for a unary one.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

# Metadata naming one dispatcher -> worker call, so WorkerControlService.CancelCall can find it on
# whichever replica runs it (services/workers/cancellation.py).
CALL_ID_METADATA = "tessera-call-id"


def call_id_of(metadata: Sequence[tuple[str, str]] | None) -> str:
    """The call id a call was sent with ("" without one)."""
    return next((v for k, v in metadata or () if k == CALL_ID_METADATA), "")


# The internal credential: every worker method checks that a call carries this metadata with the
# replica's TESSERA_WORKER_TOKEN (the gateway and dispatchers send theirs), so the worker API cannot be
# called around the gateway's auth, rate limits and job records. Only a trusted single-user box may
# opt out, with TESSERA_WORKER_AUTH=off.
WORKER_TOKEN_METADATA = "x-tessera-worker-token"
WORKER_TOKEN_ENV = "TESSERA_WORKER_TOKEN"
WORKER_AUTH_ENV = "TESSERA_WORKER_AUTH"

# Details prefix of an INTERNAL status the worker sets when its engine failed on a request (a bug, or
# inputs the model cannot take): retrying on another replica would fail the same way, so the
# dispatcher ends the job with this message. Ray Serve answers INTERNAL without it when a replica
# dies mid-call, which is worth another attempt. (Serve's proxy drops a replica's trailing metadata
# on errors, so the mark must ride in the details.)
WORKER_FAILURE_PREFIX = "tessera worker: "


def worker_token() -> str:
    """This process's worker credential ("" = none configured)."""
    return os.environ.get(WORKER_TOKEN_ENV, "")


def token_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata a caller of the worker API sends (none without a configured token)."""
    token = worker_token()
    return ((WORKER_TOKEN_METADATA, token),) if token else ()


def check_token(expected: str, metadata: Sequence[tuple[str, str]] | None) -> bool:
    """Whether a call's metadata carries `expected` (constant-time compare); `expected` "" = auth off."""
    if not expected:
        return True
    got = next((v for k, v in metadata or () if k == WORKER_TOKEN_METADATA), "")
    return hmac.compare_digest(got.encode(), expected.encode())


def require_token() -> str:
    """The replica's token; raises when none is configured and auth was not turned off explicitly."""
    token = worker_token()
    if not token and os.environ.get(WORKER_AUTH_ENV, "").lower() != "off":
        raise RuntimeError(f"no worker credential: set {WORKER_TOKEN_ENV} (the gateway and dispatchers must send "
                           f"the same), or {WORKER_AUTH_ENV}=off on a trusted single-user machine")
    return token


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
