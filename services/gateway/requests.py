"""Per-call plumbing every public RPC gets, as a grpc.aio interceptor (it runs before auth):

- a request id: the caller's `x-request-id` when it sent a sane one, else a fresh one; sent back in
  the initial AND the trailing metadata of every response (errors included), recorded in the job it
  submits and in the structured logs, so a support ticket's id finds the job and its worker calls;
- request bytes parsed here, so a body that is not the method's message (garbage, invalid UTF-8 in a
  string field) is INVALID_ARGUMENT with the reason instead of grpc's UNKNOWN.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.gateway.rpc_errors import RpcError, abort

REQUEST_ID_HEADER = "x-request-id"
# The id of the call this task serves; grpc.aio runs the interceptor and the handler in the same task.
REQUEST_ID: ContextVar[str] = ContextVar("tessera_request_id", default="")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}", re.ASCII)  # a caller's id is echoed only if it looks like one


def request_id_of(metadata: Any) -> str:
    for k, v in metadata or ():
        if k == REQUEST_ID_HEADER:
            val = v.decode(errors="replace") if isinstance(v, bytes) else v
            if _SANE_ID.fullmatch(val):
                return val
    return os.urandom(8).hex()


def current_request_id() -> str:
    return REQUEST_ID.get()


class RequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:  # unknown method (grpc answers), or none of ours
            return handler
        return _wrap(handler, request_id_of(details.invocation_metadata))


def _wrap(handler: grpc.RpcMethodHandler, request_id: str) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    async def begin(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
        REQUEST_ID.set(request_id)
        md = ((REQUEST_ID_HEADER, request_id),)
        await ctx.send_initial_metadata(md)
        ctx.set_trailing_metadata(md)  # rpc_errors.abort adds it to an error's trailers too
        if parse is None:
            return raw
        try:
            return parse(raw)
        except (DecodeError, UnicodeDecodeError, ValueError) as e:
            await abort(ctx, RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                                      "the request body is not a valid message of this method "
                                      f"({type(e).__name__})", reason="MALFORMED_REQUEST",
                                      violations=[("request", "could not be parsed as the method's message")]))

    if handler.response_streaming:
        async def stream(raw: bytes, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            req = await begin(raw, ctx)
            async for msg in handler.unary_stream(req, ctx):
                yield msg
        return grpc.unary_stream_rpc_method_handler(stream, None, handler.response_serializer)

    async def unary(raw: bytes, ctx: grpc.aio.ServicerContext) -> Any:
        return await handler.unary_unary(await begin(raw, ctx), ctx)
    return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)
