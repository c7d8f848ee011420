"""Tessera client SDK: text generation with diffusion LLMs over gRPC.

    import tessera
    with tessera.Client("localhost:50051", api_key="...") as client:
        print(client.generate_text("What is 2+3?").text)

`tessera.AsyncClient` offers the same API for asyncio; failures raise `tessera.TesseraError` subclasses.
"""

from tessera._version import __version__
from tessera.aio import AsyncClient, AsyncJobEventStream, AsyncTextStream
from tessera.client import Client, JobEventStream, TextStream
from tessera.errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TesseraError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from tessera.types import TextChunk, TextResult, Usage, text_result_from_job

__all__ = [
    "AsyncClient",
    "AsyncJobEventStream",
    "AsyncTextStream",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "JobEventStream",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TesseraError",
    "TextChunk",
    "TextResult",
    "TextStream",
    "UnauthenticatedError",
    "UnavailableError",
    "Usage",
    "__version__",
    "from_rpc_error",
    "text_result_from_job",
]
