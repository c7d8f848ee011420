"""Tessera client SDK: text generation with diffusion LLMs, image generation and editing, and image
understanding, over gRPC.

    import tessera
    with tessera.Client("localhost:50051", api_key="...") as client:
        print(client.generate_text("What is 2+3?").text)

`tessera.AsyncClient` offers the same API for asyncio; failures raise `tessera.TesseraError` subclasses.
"""

from tessera._version import __version__
from tessera.aio import AsyncClient, AsyncImageStream, AsyncJobEventStream, AsyncTextStream
from tessera.client import Client, ImageStream, JobEventStream, TextStream
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
from tessera.types import (
    ImageProgress,
    ImageResult,
    ImageUsage,
    ModelInfo,
    TextChunk,
    TextResult,
    Usage,
    text_result_from_job,
)

__all__ = [
    "AsyncClient",
    "AsyncImageStream",
    "AsyncJobEventStream",
    "AsyncTextStream",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "ImageProgress",
    "ImageResult",
    "ImageStream",
    "ImageUsage",
    "InternalError",
    "InvalidArgumentError",
    "JobEventStream",
    "ModelInfo",
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
