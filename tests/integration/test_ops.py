"""Operational surface: gRPC health, reflection, and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import urllib.request

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.queue.redis_server import free_port
from tessera.v1 import text_pb2
from tests.integration.harness import md, stack


def test_health_reflection_and_metrics(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            h = health_pb2_grpc.HealthStub(s.channel)
            for svc in ("", "tessera.v1.TextGenerationService", "tessera.v1.JobService"):
                r = await h.Check(health_pb2.HealthCheckRequest(service=svc))  # no API key needed
                assert r.status == health_pb2.HealthCheckResponse.SERVING
            refl = reflection_pb2_grpc.ServerReflectionStub(s.channel)
            names: list[str] = []
            async for resp in refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                    list_services="")])):
                names += [x.name for x in resp.list_services_response.service]
            assert {"tessera.v1.TextGenerationService", "tessera.v1.JobService"} <= set(names)
            await s.text.Generate(text_pb2.GenerateRequest(request=text_pb2.TextRequest(model="echo", prompt="a b")),
                                  metadata=md(), timeout=10)
            port = free_port()
            s.gateway.metrics.serve(port, "127.0.0.1")
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            for name in ("tessera_queue_depth_jobs", "tessera_queue_oldest_job_age_seconds", "tessera_jobs_in_flight",
                         'tessera_jobs_total{service="text",state="SUCCEEDED"} 1.0',
                         "tessera_time_to_first_chunk_seconds_bucket", "tessera_inter_chunk_latency_seconds_bucket",
                         "tessera_job_duration_seconds_bucket", 'tessera_generated_tokens_total{model="echo"} 2.0',
                         "tessera_tokens_per_forward_bucket",
                         'tessera_grpc_requests_total{code="OK",method="Generate"}'):
                assert name in body, name
    asyncio.run(go())
