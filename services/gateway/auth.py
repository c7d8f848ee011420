"""API-key authentication and per-key token-bucket rate limits, as a grpc.aio interceptor.

Keys are stored only as SHA-256 hashes (from a YAML file or an environment variable); the bearer
token of each call is hashed and looked up. Health checks and reflection stay open so probes and
tools work without a key. The caller's key id becomes the job owner (ListJobs shows own jobs).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from services.gateway.config import AuthConfig
from services.gateway.rpc_errors import RpcError, abort

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
ANONYMOUS = "anonymous"
# The key id the interceptor authenticated. grpc.aio runs the interceptor and the handler in the same
# task per call, so the handler reads it here instead of hashing the bearer token a second time.
CALLER: ContextVar[str | None] = ContextVar("tessera_caller", default=None)


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(slots=True)
class ApiKey:
    id: str
    sha256: str
    rate_per_s: float
    burst: int


class TokenBucket:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> float:
        """0.0 if a token was taken, else seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def load_keys(cfg: AuthConfig) -> dict[str, ApiKey]:
    """sha256 -> key, from the keys file and the environment variable."""
    entries: list[dict[str, Any]] = []
    if cfg.keys_file:
        entries += (yaml.safe_load(Path(cfg.keys_file).read_text()) or {}).get("keys", [])
    for item in filter(None, os.environ.get(cfg.env_var, "").split(",")):
        parts = item.strip().split(":")
        if len(parts) < 2:
            raise ValueError(f"{cfg.env_var}: entries are id:sha256[:rate[:burst]], got {item!r}")
        e: dict[str, Any] = {"id": parts[0], "sha256": parts[1]}
        if len(parts) > 2:
            e["rate_per_s"] = float(parts[2])
        if len(parts) > 3:
            e["burst"] = int(parts[3])
        entries.append(e)
    keys = {}
    for e in entries:
        digest = str(e["sha256"]).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"API key {e.get('id')!r}: sha256 must be 64 hex characters")
        keys[digest] = ApiKey(str(e["id"]), digest, float(e.get("rate_per_s", cfg.default_rate_per_s)),
                              int(e.get("burst", cfg.default_burst)))
    return keys


class Authenticator:
    def __init__(self, cfg: AuthConfig, keys: dict[str, ApiKey] | None = None) -> None:
        self.cfg = cfg
        self.keys = load_keys(cfg) if keys is None else keys
        self.buckets: dict[str, TokenBucket] = {}
        if cfg.enabled and not self.keys:
            raise ValueError("auth is enabled but no API keys are configured "
                             f"(set auth.keys_file or {cfg.env_var}, or disable auth)")

    def _lookup(self, metadata: Any) -> ApiKey:
        token = ""
        for k, v in metadata or ():
            if k == "authorization":
                val = v.decode() if isinstance(v, bytes) else v
                if val.lower().startswith("bearer "):
                    token = val[7:].strip()
        if not token:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "missing 'authorization: Bearer <api key>' metadata",
                           reason="MISSING_API_KEY")
        digest = hash_key(token)
        # A dict lookup by digest, not a scan: constant cost however many keys. It leaks no more
        # than timing about SHA-256 digests, which an attacker cannot steer toward a stored key.
        key = self.keys.get(digest)
        if key is None:
            raise RpcError(grpc.StatusCode.UNAUTHENTICATED, "invalid API key", reason="INVALID_API_KEY")
        return key

    def owner(self, metadata: Any) -> str:
        """The caller's key id (the call already passed the interceptor)."""
        if not self.cfg.enabled:
            return ANONYMOUS
        return CALLER.get() or self._lookup(metadata).id

    def authenticate(self, metadata: Any) -> str:
        """The caller's key id, charging its rate limit; raises RpcError(UNAUTHENTICATED /
        RESOURCE_EXHAUSTED)."""
        if not self.cfg.enabled:
            return ANONYMOUS
        key = self._lookup(metadata)
        bucket = self.buckets.setdefault(key.id, TokenBucket(key.rate_per_s, key.burst))
        wait = bucket.take()
        if wait > 0:
            raise RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"rate limit of {key.rate_per_s:g} requests/s (burst {key.burst}) exceeded for key "
                           f"{key.id!r}; retry in {wait:.2f}s", reason="RATE_LIMITED", retry_after_s=wait)
        return key.id


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects unauthenticated or rate-limited calls before any handler (or Redis) is touched."""

    def __init__(self, auth: Authenticator, on_reject: Callable[[str, str], None] | None = None) -> None:
        self.auth, self.on_reject = auth, on_reject

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        try:
            CALLER.set(self.auth.authenticate(details.invocation_metadata))
        except RpcError as err:
            if self.on_reject:
                self.on_reject(method, err.code.name)
            return _rejecting_handler(await continuation(details), err)
        return await continuation(details)


def _rejecting_handler(handler: grpc.RpcMethodHandler | None, err: RpcError) -> grpc.RpcMethodHandler:
    async def unary(_req: Any, ctx: grpc.aio.ServicerContext) -> None:
        await abort(ctx, err)

    async def stream(_req: Any, ctx: grpc.aio.ServicerContext):
        await abort(ctx, err)
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
