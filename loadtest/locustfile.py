"""Locust load test of the Tessera gateway over gRPC (tessera.v1.TextGenerationService).

    TESSERA_API_KEY=... locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s --host 127.0.0.1:50051

Request names in Locust's statistics:
  Generate               unary call, whole round trip
  GenerateStream/ttfc    time to the first text chunk (the job-id header message that comes
                         before any text does not count: it says the job was queued, not served)
  GenerateStream/total   the whole stream, until the result message
Prompts are held-out arithmetic word problems (lab.worlds.arith). Settings from the environment:
TESSERA_API_KEY (required), TESSERA_MODEL (default: the gateway's default model), TESSERA_MAX_TOKENS
(0 = model default), TESSERA_TIMEOUT_S (per call, default 120).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, task
from locust.exception import StopUser

# Locust runs on gevent: make grpc's blocking calls yield to other greenlets instead of blocking
# the whole process. Must run before any channel exists.
grpc_gevent.init_gevent()

# Locust puts this file's folder on sys.path, not the repository root, and the repository need
# not be pip-installed: make `models` importable either way.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from lab.worlds.arith import problems  # noqa: E402
from tessera.v1 import text_pb2, text_pb2_grpc  # noqa: E402

PROMPTS = [p.question for p in problems("heldout", 200)]


class TesseraUser(User):
    """One client of the gateway; --host is the gateway's host:port (no scheme)."""

    wait_time = constant(0)  # closed loop: each user sends its next request as soon as one ends

    def on_start(self) -> None:
        key = os.environ.get("TESSERA_API_KEY", "")
        if not key:
            raise StopUser("set TESSERA_API_KEY to a key the gateway accepts")
        if not self.host:
            raise StopUser("pass --host HOST:PORT of the gateway")
        self.metadata = (("authorization", f"Bearer {key}"),)
        self.timeout_s = float(os.environ.get("TESSERA_TIMEOUT_S", "120"))
        self.params = text_pb2.TextParams(max_tokens=int(os.environ.get("TESSERA_MAX_TOKENS", "0")))
        self.model = os.environ.get("TESSERA_MODEL", "")
        # The host may be written as a URL out of habit; gRPC wants host:port.
        target = self.host.split("://", 1)[-1].rstrip("/")
        self.channel = grpc.insecure_channel(target)
        self.stub = text_pb2_grpc.TextGenerationServiceStub(self.channel)

    def on_stop(self) -> None:
        if getattr(self, "channel", None) is not None:
            self.channel.close()

    def _request(self) -> text_pb2.TextRequest:
        return text_pb2.TextRequest(model=self.model, prompt=random.choice(PROMPTS), params=self.params)

    def _fire(self, name: str, start: float, length: int, exc: BaseException | None = None) -> None:
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, response=None, context={}, exception=exc)

    @task
    def generate(self) -> None:
        start = time.perf_counter()
        try:
            resp = self.stub.Generate(text_pb2.GenerateRequest(request=self._request()), metadata=self.metadata,
                                      timeout=self.timeout_s)
        except grpc.RpcError as e:
            self._fire("Generate", start, 0, e)
            return
        self._fire("Generate", start, resp.ByteSize())

    @task
    def generate_stream(self) -> None:
        start = time.perf_counter()
        length, first_chunk, result = 0, False, False
        try:
            for msg in self.stub.GenerateStream(text_pb2.GenerateStreamRequest(request=self._request()),
                                                metadata=self.metadata, timeout=self.timeout_s):
                length += msg.ByteSize()
                kind = msg.WhichOneof("payload")
                if kind == "chunk" and not first_chunk:
                    first_chunk = True
                    self._fire("GenerateStream/ttfc", start, msg.ByteSize())
                elif kind == "result":
                    result = True
        except grpc.RpcError as e:
            self._fire("GenerateStream/total", start, length, e)
            return
        self._fire("GenerateStream/total", start, length,
                   None if result else RuntimeError("the stream ended without a result message"))
