"""Failure modes of image jobs with real processes: a dispatcher SIGKILLed mid-image.

Real pieces: redis-server (the session fixture), the gateway, a `python -m services.dispatcher`
subprocess, and the real image engine (tiny random Orthus checkpoint) served over grpc.aio in this
process: Ray Serve would add ~10 s of start-up and nothing the dispatcher sees, which is the same
ImageWorkerService. The engine's native resolution is 64 (a 4x4 grid: 16 patches instead of the
4 at the default 32) and the request asks for 120 denoising steps per patch: both documented knobs
(worker config `model.resolution`, request `params.steps`) that slow the tiny model down enough to
kill the dispatcher between two patches (~0.1-0.3 s each on a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import redis
import yaml
from PIL import Image

from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.dispatcher import Dispatcher
from services.dispatcher.worker_client import WorkerClient
from services.gateway.config import GatewayConfig, ImageLimits
from services.gateway.server import Gateway
from services.workers.image.config import ImageArgs
from services.workers.image.engine import ImageEngine
from services.workers.protocol import InvalidRequestError
from tessera.v1 import images_pb2, images_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from tessera.worker.v1 import worker_pb2, worker_pb2_grpc
from tests.integration.harness import auth, md, wait_for

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"
RESOLUTION, STEPS = 64, 120
WIDTH, HEIGHT = 48, 40  # not the native size: the worker resamples, and the result must have this size


class ImageWorkerServicer(worker_pb2_grpc.ImageWorkerServiceServicer):
    """ImageWorkerService over one real ImageEngine on a plain grpc.aio server (what the Serve deployment
    does, minus Ray), recording each call's job id, seed and how it ended."""

    def __init__(self, engine: ImageEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, int, str]] = []  # (job id, seed, "ok" | "cancelled" | "error")

    async def GenerateImage(self, request: worker_pb2.GenerateImageRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[worker_pb2.GenerateImageResponse]:
        ended = "error"
        try:
            async with contextlib.aclosing(self.engine.generate(request)) as stream:
                async for msg in stream:
                    yield msg
            ended = "ok"
        except InvalidRequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except (asyncio.CancelledError, GeneratorExit):
            ended = "cancelled"  # the caller (a dispatcher) went away; closing the stream stops its batch
            raise
        finally:
            self.calls.append((request.job_id, request.sampling.seed, ended))


def _pixels(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # no cleanup, no ack: its pending queue entry is orphaned
    proc.wait()


def test_killed_image_dispatcher_job_is_reclaimed_and_finished_without_duplicates(
        redis_server, image_checkpoints: Path, tmp_path: Path) -> None:
    async def go(stack: contextlib.AsyncExitStack) -> None:
        engine = ImageEngine(ImageArgs.load({
            "model": {"name": MODEL, "backend": "orthus", "resolution": RESOLUTION,
                      "model_dir": str(image_checkpoints / "shapes-orthus")},
            "batching": {"max_batch_size": 4, "max_wait_ms": 20}}))
        await engine.start()
        stack.push_async_callback(engine.shutdown)
        total = engine.patches_total
        assert total == 16
        worker = ImageWorkerServicer(engine)
        wserver = grpc.aio.server()
        worker_pb2_grpc.add_ImageWorkerServiceServicer_to_server(worker, wserver)
        waddr = f"127.0.0.1:{wserver.add_insecure_port('127.0.0.1:0')}"
        await wserver.start()
        stack.push_async_callback(wserver.stop, 0)

        dcfg = DispatcherConfig(enabled=False, worker_address=waddr, services=["image"], claim_idle_ms=1500,
                                heartbeat_ms=300)
        cfg = GatewayConfig(port=0, metrics_port=0, redis_url=redis_server.url, key_prefix=f"t{os.urandom(4).hex()}:",
                            grace_s=0.5, images=ImageLimits(models=[MODEL]), dispatcher=dcfg)
        gw = Gateway(cfg)
        gport = await gw.start(auth())  # no in-process dispatcher: the subprocess, then the survivor
        stack.push_async_callback(gw.stop)
        store = gw.store
        assert store is not None
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gport}")
        stack.push_async_callback(channel.close)
        images = images_pb2_grpc.ImageGenerationServiceStub(channel)
        jobs = jobs_pb2_grpc.JobServiceStub(channel)

        conf = tmp_path / "dispatcher.yaml"
        conf.write_text(yaml.safe_dump({
            "redis_url": cfg.redis_url, "key_prefix": cfg.key_prefix,
            "dispatcher": {"worker_address": waddr, "services": ["image"], "claim_idle_ms": dcfg.claim_idle_ms,
                           "heartbeat_ms": dcfg.heartbeat_ms}}))
        log_path = tmp_path / "dispatcher.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "services.dispatcher", "--config", str(conf)], cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
        stack.callback(_kill, proc)

        def dispatcher_log() -> str:
            return f"dispatcher log:\n{log_path.read_text()[-3000:]}"

        # Submit only once the subprocess listens: the client's stream must not go 5 s without an event
        # (see the note at the end of this file), and start-up takes seconds on a loaded machine.
        async def dispatcher_listening() -> bool:
            assert proc.poll() is None, f"the dispatcher exited; {dispatcher_log()}"
            # Its cancel listener subscribed (this gateway runs no dispatcher), so its loop runs.
            ((_, listeners),) = await store.r.pubsub_numsub(store.cancel_channel)
            try:
                return listeners > 0 and bool(await store.r.xinfo_groups(store.queue_key("image")))
            except redis.ResponseError:  # no queue yet
                return False

        await wait_for(dispatcher_listening, timeout=30, every=0.05)

        # The client streams GenerateImage across the crash: its one stream must simply carry on.
        req = images_pb2.GenerateImageRequest(request=images_pb2.ImageRequest(
            prompt="two red circles", params=images_pb2.ImageParams(width=WIDTH, height=HEIGHT, steps=STEPS)))
        received: list[images_pb2.GenerateImageResponse] = []

        async def client() -> list[images_pb2.GenerateImageResponse]:
            async for msg in images.GenerateImage(req, metadata=md(), timeout=90):
                received.append(msg)
            return received

        client_task = asyncio.create_task(client())
        stack.push_async_callback(_cancel, client_task)

        async def submitted() -> bool:
            if client_task.done():
                client_task.result()  # raises the call's error
            return bool(received)

        await wait_for(submitted, timeout=10)
        jid = received[0].job_id

        async def mid_image() -> bool:
            rec = await store.get(jid)
            assert rec is not None and rec.job.state != jobs_pb2.JOB_STATE_SUCCEEDED, "the image was done too fast"
            return rec.tokens >= 2

        try:
            await wait_for(mid_image, timeout=30)
        except TimeoutError:
            raise AssertionError(f"no progress reported; {dispatcher_log()}") from None
        _kill(proc)
        rec = await store.get(jid)
        assert rec is not None
        killed_at = rec.tokens
        assert rec.job.state == jobs_pb2.JOB_STATE_RUNNING and rec.job.attempts == 1
        assert 2 <= killed_at < total, killed_at
        seed = rec.job.spec.image.params.seed  # fixed by the gateway at submission

        survivor = Dispatcher(store, WorkerClient(waddr, "image"), dcfg, Metrics(), service="image")
        stack.push_async_callback(survivor.worker.close)
        stack.push_async_callback(_cancel, asyncio.create_task(survivor.run()))
        msgs = await asyncio.wait_for(client_task, timeout=45)

        rec = await store.get(jid)
        assert rec is not None
        job = rec.job
        assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED, job.error
        assert job.attempts == 2
        assert rec.tokens == total and job.progress == 1.0
        res = job.result.image
        assert (res.width, res.height, res.model, res.seed) == (WIDTH, HEIGHT, MODEL, seed)
        assert (res.usage.patches, res.usage.steps) == (total, STEPS)
        pixels = _pixels(res.png)
        assert pixels.shape == (HEIGHT, WIDTH, 3)

        # The worker saw the job twice with the same seed: the killed dispatcher's call was cancelled (the
        # engine stopped that batch), the survivor's ran to the end.
        assert [c for c in worker.calls if c[0] == jid] == [(jid, seed, "cancelled"), (jid, seed, "ok")]

        # What the client saw on its one GenerateImage stream, and what WatchJob replays afterwards: every
        # patch count exactly once and in order across both attempts (never backwards, never twice), then
        # the one result.
        assert all(m.job_id == jid for m in msgs)
        payloads = [m.WhichOneof("payload") for m in msgs]
        assert [m.progress.patches_done for m in msgs if m.HasField("progress")] == list(range(1, total + 1))
        assert payloads.count("result") == 1 and payloads[-1] == "result"
        assert msgs[-1].result.png == res.png
        events = [e.event async for e in jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=jid), metadata=md(),
                                                       timeout=10)]
        kinds = [e.WhichOneof("kind") for e in events]
        progress = [(e.image_progress.patches_done, e.image_progress.patches_total) for e in events
                    if e.HasField("image_progress")]
        assert progress == [(n, total) for n in range(1, total + 1)]
        assert [e.state for e in events if e.HasField("state")] == [
            jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING, jobs_pb2.JOB_STATE_RUNNING,
            jobs_pb2.JOB_STATE_SUCCEEDED]
        second = [i for i, k in enumerate(kinds) if k == "state"][2]  # the survivor's attempt starts
        assert events[second - 1].image_progress.patches_done == killed_at  # right after the last reported patch
        assert kinds.count("result") == 1 and kinds[-1] == "result"

        # Same seed, same image: an uninterrupted job with the crashed job's seed gives the same PNG, and
        # one with another seed a different one (else the equality would prove nothing about seeding).
        # One at a time: a batched Orthus call can differ from an unbatched one in the last bit of a few
        # pixels (float summation order), and both attempts of the crashed job ran alone.
        assert res.usage.batch_size == 1
        refs = []
        for s in (seed, seed + 1):
            params = images_pb2.ImageParams(width=WIDTH, height=HEIGHT, steps=STEPS, seed=s)
            spec = jobs_pb2.JobSpec(image=images_pb2.ImageRequest(prompt=req.request.prompt, params=params))
            ref_id = (await jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=spec), metadata=md())).job.id
            final = [e.event async for e in jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=ref_id), metadata=md(),
                                                          timeout=30)][-1]
            assert final.HasField("result"), final
            refs.append(final.result.image)
        same, other = refs
        assert same.seed == seed and same.usage.batch_size == 1
        assert np.array_equal(_pixels(same.png), pixels)
        assert same.png == res.png
        assert not np.array_equal(_pixels(other.png), pixels)

        queue = store.queue_key("image")
        assert await store.r.xlen(queue) == 0
        assert (await store.r.xpending(queue, "dispatchers"))["pending"] == 0

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await go(stack)

    asyncio.run(main())

