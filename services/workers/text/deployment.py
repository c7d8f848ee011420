"""The text worker's Ray Serve deployment and its builder.

`TextWorker` is a plain class; `build_text_worker` applies `serve.deployment` with the options
from config (the Ray Serve LLM builder pattern), so placement and scaling never live in code.
Ray Serve's gRPC proxy routes each TextWorkerService RPC to the method of the same name; an
async generator method serves the server-streaming GenerateText.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from ray import serve
from ray.serve import metrics
from ray.serve.grpc_util import RayServegRPCContext

from services.workers.protocol import InvalidRequestError, TextEngineProtocol
from services.workers.text.config import TextWorkerConfig, load_config
from services.workers.text.engine import LocalTextEngine
from tessera.worker.v1.worker_pb2 import (
    DescribeTextRequest,
    DescribeTextResponse,
    GenerateTextRequest,
    GenerateTextResponse,
)

TOKENS_PER_FORWARD_BUCKETS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]


class WorkerMetrics:
    """Per-replica custom metrics; Serve adds deployment/replica/application tags itself."""

    def __init__(self, model: str) -> None:
        tags = ("model",)
        self.tokens = metrics.Counter("tessera_worker_generated_tokens",
                                      description="Tokens streamed to callers.", tag_keys=tags)
        self.forwards = metrics.Counter("tessera_worker_forward_passes",
                                        description="Model forward passes run by generations.", tag_keys=tags)
        self.tokens_per_forward = metrics.Histogram(
            "tessera_worker_tokens_per_forward", description="Tokens decoded per forward pass, per request.",
            boundaries=TOKENS_PER_FORWARD_BUCKETS, tag_keys=tags)
        self.latency = metrics.Histogram(
            "tessera_worker_request_latency_seconds", description="GenerateText wall time, per request.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=tags)
        self.errors = metrics.Counter("tessera_worker_errors",
                                      description="Failed or cancelled GenerateText calls, by gRPC code.",
                                      tag_keys=(*tags, "code"))
        for m in (self.tokens, self.forwards, self.tokens_per_forward, self.latency, self.errors):
            m.set_default_tags({"model": model})

    def record(self, started: float, tokens: int, skipped: int, last: GenerateTextResponse | None,
               code: str | None) -> None:
        self.latency.observe(time.perf_counter() - started)
        if tokens:
            self.tokens.inc(tokens)
        if last is not None and last.forward_passes:
            self.forwards.inc(last.forward_passes)
            if last.finished:  # a resumed job decoded its skipped tokens too
                self.tokens_per_forward.observe((tokens + skipped) / last.forward_passes)
        if code is not None:
            self.errors.inc(tags={"code": code})


class TextWorker:
    """Serves TextWorkerService over one text engine."""

    # Ray Serve awaits an async constructor; the engine loads the model here.
    async def __init__(self, config: TextWorkerConfig | Mapping[str, Any]) -> None:  # type: ignore[misc]
        self.config = load_config(config)
        self.engine: TextEngineProtocol = LocalTextEngine(
            self.config.model, max_concurrency=self.config.deployment.max_ongoing_requests)
        await self.engine.start()
        self.metrics = WorkerMetrics(self.config.model.name)

    async def GenerateText(  # named exactly like the RPC: Serve routes by name
        self, request: GenerateTextRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> AsyncIterator[GenerateTextResponse]:
        started, tokens, last, code = time.perf_counter(), 0, None, None
        try:
            # aclosing: if Serve closes this generator instead of cancelling it, the engine's
            # generator must still be closed now (that is what stops its decoding).
            async with contextlib.aclosing(self.engine.generate(request)) as stream:
                async for msg in stream:
                    tokens, last = tokens + msg.token_count, msg
                    yield msg
        except InvalidRequestError as e:
            code = "invalid_argument"
            # Serve keeps a code set on the context when the method raises (else: INTERNAL).
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                grpc_context.set_details(str(e))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "cancelled"
            raise
        except Exception:
            code = "internal"
            raise
        finally:
            self.metrics.record(started, tokens, request.skip_tokens if last else 0, last, code)

    async def DescribeText(
        self, request: DescribeTextRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> DescribeTextResponse:
        return self.engine.describe()

    async def check_health(self) -> None:
        await self.engine.check_health()

    def job_stats(self, job_id: str) -> dict[str, Any] | None:
        """Forward passes and state of a recent job (via a DeploymentHandle; not an RPC)."""
        return self.engine.job_stats(job_id) if isinstance(self.engine, LocalTextEngine) else None

    async def __del__(self) -> None:
        # Serve awaits this on graceful shutdown.
        await self.engine.shutdown()


def build_text_worker(config: TextWorkerConfig | Mapping[str, Any] | str | Path | None = None) -> serve.Application:
    """The text worker application, deployment options from config (None = config.yaml)."""
    cfg = load_config(config)
    return serve.deployment(TextWorker, **cfg.deployment.to_serve_kwargs()).bind(cfg)
