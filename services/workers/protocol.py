"""The engine protocol every text worker deployment drives (after Ray Serve LLM's `LLMEngine`).

The deployment owns Serve concerns (gRPC status codes, metrics, health plumbing); an engine owns
the model. Streaming is always an async generator, so a cancelled request stops the engine at
its next await, and a mock engine can stand in for tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from tessera.worker.v1.worker_pb2 import DescribeTextResponse, GenerateTextRequest, GenerateTextResponse

# Metadata naming one dispatcher -> worker call, so WorkerControlService.CancelCall can find it on
# whichever replica runs it (services/workers/cancellation.py).
CALL_ID_METADATA = "tessera-call-id"


def call_id_of(metadata: Sequence[tuple[str, str]] | None) -> str:
    """The call id a call was sent with ("" without one)."""
    return next((v for k, v in metadata or () if k == CALL_ID_METADATA), "")


class InvalidRequestError(ValueError):
    """A request the engine refuses as given (the deployment answers INVALID_ARGUMENT)."""


@runtime_checkable
class TextEngineProtocol(Protocol):
    async def start(self) -> None:
        """Load the model; called once before any other method."""
        ...

    def generate(self, request: GenerateTextRequest) -> AsyncIterator[GenerateTextResponse]:
        """Stream one generation: chunks of final text, then a message with finished=True.

        Raises InvalidRequestError before the first message for a request it cannot serve.
        """
        ...

    def describe(self) -> DescribeTextResponse:
        ...

    async def check_health(self) -> None:
        """Raise if the engine can no longer serve."""
        ...

    async def shutdown(self) -> None:
        ...
