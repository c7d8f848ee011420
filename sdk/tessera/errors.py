"""Exceptions raised by the Tessera SDK.

Every gRPC failure reaches users as a `TesseraError` subclass chosen by status code, so callers can
`except tessera.InvalidArgumentError` without importing grpc. The gateway puts the machine-readable
part of an error (which field is wrong, how long to back off) into the rich status trailer
(`grpc-status-details-bin`, gRFC L44); we unpack it here so nobody has to parse messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "TesseraError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]

REQUEST_ID_KEY = "x-request-id"

# The standard google.rpc detail types; anything else stays a packed Any so no information is lost.
_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RequestInfo,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
)


class TesseraError(Exception):
    """A failed Tessera call: the gRPC status plus whatever structured details the server attached."""

    def __init__(self, code: grpc.StatusCode, message: str, details: Sequence[Message] = (),
                 request_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.details: list[Message] = list(details)
        self.request_id = request_id
        super().__init__(str(self))

    @property
    def field_violations(self) -> list[tuple[str, str]]:
        """(field, description) pairs from every google.rpc.BadRequest detail."""
        return [(v.field, v.description) for d in self.details if isinstance(d, error_details_pb2.BadRequest)
                for v in d.field_violations]

    @property
    def retry_delay_s(self) -> float | None:
        """The server's back-off hint (google.rpc.RetryInfo), in seconds; None when it gave none."""
        for d in self.details:
            if isinstance(d, error_details_pb2.RetryInfo) and d.HasField("retry_delay"):
                return d.retry_delay.seconds + d.retry_delay.nanos / 1e9
        return None

    @property
    def error_info(self) -> error_details_pb2.ErrorInfo | None:
        """The google.rpc.ErrorInfo detail (stable `reason` to branch on), if the server sent one."""
        return next((d for d in self.details if isinstance(d, error_details_pb2.ErrorInfo)), None)

    @property
    def reason(self) -> str:
        """ErrorInfo.reason (e.g. "INVALID_REQUEST"): stable across message rewording; "" when absent."""
        info = self.error_info
        return info.reason if info is not None else ""

    def __str__(self) -> str:
        # One line with everything a user needs in a log or terminal: code, message, bad fields, id.
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        # The gateway often spells the violations out in its message already; don't repeat them.
        missing = [v for v in (f"{f}: {d}" if f else d for f, d in self.field_violations) if v not in self.message]
        if missing:
            text += " (" + "; ".join(missing) + ")"
        if self.request_id:
            text += f" [request_id={self.request_id}]"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only state don't pickle by default; multiprocessing users need it.
        return (type(self), (self.code, self.message, self.details, self.request_id))


class InvalidArgumentError(TesseraError):
    """The request is malformed; see `field_violations`. Retrying the same request cannot help."""


class UnauthenticatedError(TesseraError):
    """No API key, or the key is not valid."""


class PermissionDeniedError(TesseraError):
    """The key is valid but may not do this (e.g. another tenant's job)."""


class NotFoundError(TesseraError):
    """The job or model does not exist (or has expired)."""


class ResourceExhaustedError(TesseraError):
    """Rate limit or quota hit; wait `retry_delay_s` (when given) before trying again."""


class UnavailableError(TesseraError):
    """The gateway could not be reached or is overloaded; the SDK already retried before raising this."""


class DeadlineExceededError(TesseraError):
    """The call's deadline (`timeout=`) passed before it finished."""


class CancelledError(TesseraError):
    """The call was cancelled (by the client, or by the server shutting down)."""


class FailedPreconditionError(TesseraError):
    """The system is not in a state that allows the call (e.g. idempotency key reused for another request)."""


class InternalError(TesseraError):
    """A server-side bug or lost data; report it with `request_id`."""


_BY_CODE: dict[grpc.StatusCode, type[TesseraError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}


def error_for_code(code: grpc.StatusCode, message: str, details: Sequence[Message] = (),
                   request_id: str | None = None) -> TesseraError:
    """Build the TesseraError subclass for `code` (TesseraError itself for codes without one)."""
    return _BY_CODE.get(code, TesseraError)(code, message, details, request_id)


def unpack_details(packed: Iterable[any_pb2.Any]) -> list[Message]:
    """Unpack google.rpc detail messages; unknown or corrupt ones are kept as the packed Any."""
    out: list[Message] = []
    for item in packed:
        for cls in _DETAIL_TYPES:
            if item.Is(cls.DESCRIPTOR):
                msg = cls()
                try:
                    item.Unpack(msg)
                except DecodeError:
                    msg = item
                out.append(msg)
                break
        else:
            out.append(item)
    return out


def from_status(status: status_pb2.Status, request_id: str | None = None) -> TesseraError:
    """Convert a google.rpc.Status (e.g. `Job.error`) into the matching TesseraError."""
    try:
        code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    except StopIteration:
        code = grpc.StatusCode.UNKNOWN
    return error_for_code(code, status.message, unpack_details(status.details), request_id)


def _metadata_value(md: Any, key: str) -> str | None:
    for k, v in md or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else v
    return None


def request_id_from(*metadata: Any) -> str:
    """The x-request-id of a call from the first of its metadata (initial, trailing) that has one; ""."""
    return next((v for md in metadata if (v := _metadata_value(md, REQUEST_ID_KEY))), "")


def _call_metadata(e: grpc.RpcError, name: str) -> Any:
    # Plain RpcErrors (e.g. raised by interceptors or test doubles) have no call methods at all.
    return getattr(e, name)() if hasattr(e, name) else None


def from_rpc_error(e: grpc.RpcError) -> TesseraError:
    """Convert a sync or grpc.aio RpcError into a TesseraError with its rich details unpacked."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = (e.details() if hasattr(e, "details") else None) or ""
    code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    details: list[Message] = []
    try:
        status = rpc_status.from_call(e) if hasattr(e, "trailing_metadata") else None
    except (ValueError, DecodeError):
        # A trailer that contradicts the real status (e.g. a proxy rewrote it) is untrusted: keep the real one.
        status = None
    if status is not None:
        details = unpack_details(status.details)
    # The gateway sends the id in both; the initial metadata is the fallback for a trailer a proxy rewrote.
    request_id = request_id_from(_call_metadata(e, "trailing_metadata"), _call_metadata(e, "initial_metadata"))
    if not request_id:
        info = next((d for d in details if isinstance(d, error_details_pb2.RequestInfo)), None)
        request_id = info.request_id if info is not None else ""
    return error_for_code(code, message, details, request_id or None)
