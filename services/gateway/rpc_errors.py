"""Rich gRPC errors (google.rpc.Status with details): what the gateway returns to its clients."""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger("tessera.gateway")
DOMAIN = "tessera.ai"
MAX_MESSAGE_CHARS = 1024
MAX_VIOLATION_CHARS = 300
MAX_VIOLATIONS = 20


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying so."""
    return text if len(text) <= limit else text[: limit - 15] + "... (truncated)"


class RpcError(Exception):
    """An error a servicer turns into a gRPC status with details (see `abort`)."""

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "",
                 violations: list[tuple[str, str]] | None = None, retry_after_s: float | None = None) -> None:
        # Bounded: messages echo what the caller sent (a 10 KB model name), and trailers over gRPC's
        # metadata limit would turn this status into RESOURCE_EXHAUSTED on the client.
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason
        self.violations = [(clip(f, 128), clip(d, MAX_VIOLATION_CHARS)) for f, d in (violations or [])[:MAX_VIOLATIONS]]
        self.retry_after_s = retry_after_s

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        if self.violations:
            br = error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in self.violations])
            details.append(_pack(br))
        if self.reason:
            details.append(_pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)))
        if self.retry_after_s is not None:
            d = duration_pb2.Duration()
            d.FromNanoseconds(int(self.retry_after_s * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=d)))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a


def invalid_argument(violations: list[tuple[str, str]]) -> RpcError:
    summary = "; ".join(f"{f}: {clip(d, 120)}" for f, d in violations)
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid request: {summary}", reason="INVALID_REQUEST",
                    violations=violations)


def unavailable(what: str, err: BaseException) -> RpcError:
    """UNAVAILABLE naming the part that is down, never its address or error text (Redis's messages
    carry host:port); the cause goes to the gateway's log."""
    log.warning("%s unavailable: %s: %s", what, type(err).__name__, err)
    return RpcError(grpc.StatusCode.UNAVAILABLE, f"{what} is unavailable; retry later",
                    reason="BACKEND_UNAVAILABLE", retry_after_s=1.0)


async def abort(context: grpc.aio.ServicerContext, err: RpcError) -> None:
    """End the call with `err`'s status and details; trailers set earlier (x-request-id) are kept."""
    status = rpc_status.to_status(err.to_status())
    kept = tuple((k, v) for k, v in context.trailing_metadata() or () if k != "grpc-status-details-bin")
    await context.abort(status.code, status.details, (*kept, *status.trailing_metadata))


def status_code_of(code: int) -> grpc.StatusCode:
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c
    return grpc.StatusCode.UNKNOWN

