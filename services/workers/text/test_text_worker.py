"""The text worker on real Ray Serve, called through Serve's real gRPC proxy."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from ray import serve

from models.engine import TextEngine
from models.sampling import SamplingParams
from services.workers.protocol import CALL_ID_METADATA, token_metadata
from services.workers.text.config import TextArgs
from services.workers.text.conftest import MAX_POSITIONS
from services.workers.text.family import TEXT
from tessera.worker.v1 import worker_pb2_grpc
from tessera.worker.v1.worker_pb2 import (
    CancelCallRequest,
    DescribeTextRequest,
    GenerateTextRequest,
    GenerateTextResponse,
)

APP_NAME = TEXT.name
MD = (("application", APP_NAME), *token_metadata())
PROMPT = "What is 2+3?"
# tau_conf = tau_act = 1 commits one token per forward: a long, slow generation to cancel.
SLOW = {"max_tokens": 900, "tau_conf": 1.0, "tau_act": 1.0}


@dataclass
class Worker:
    stub: worker_pb2_grpc.TextWorkerServiceStub
    handle: Any  # DeploymentHandle of TextWorker, for job_stats
    ref: TextEngine  # the same model, decoded in this process
    control: worker_pb2_grpc.WorkerControlServiceStub

    def cancel_call(self, call_id: str, job_id: str) -> bool:
        req = CancelCallRequest(call_id=call_id, job_id=job_id)
        return self.control.CancelCall(req, metadata=MD, timeout=30).cancelled_here

    def generate(self, timeout: float = 60, **fields: Any) -> list[GenerateTextResponse]:
        req = GenerateTextRequest(prompt=PROMPT, **fields)
        return list(self.stub.GenerateText(req, metadata=MD, timeout=timeout))

    def stats(self, job_id: str) -> dict[str, Any]:
        return self.handle.stats.remote("job_stats", job_id).result(timeout_s=10)


@pytest.fixture(scope="module")
def worker(tiny_model_dir: Path, serve_cluster: Any) -> Iterator[Worker]:
    torch.set_num_threads(1)  # as in the replica, so both decode bit-identically
    model = {"name": "tiny", "model_dir": str(tiny_model_dir), "max_tokens_limit": 1000}
    serve_cluster.deploy(APP_NAME, {"model": model},
                         {"max_ongoing_requests": 4, "health_check_period_s": 2, "ray_actor_options": {"num_cpus": 1}})
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}")
    try:
        handle = serve.get_deployment_handle(TEXT.deployment, app_name=APP_NAME)
        decoder = TextArgs.load({"model": model}).model.decoder
        yield Worker(worker_pb2_grpc.TextWorkerServiceStub(channel), handle,
                     TextEngine(tiny_model_dir, "d2f", decoder.options_for("d2f")),
                     worker_pb2_grpc.WorkerControlServiceStub(channel))
    finally:
        channel.close()
        serve.delete(APP_NAME)


def test_stream_matches_the_engine_and_describe_lists_the_model(worker: Worker) -> None:
    msgs = worker.generate(job_id="match", max_tokens=128)
    want = worker.ref.generate([PROMPT], SamplingParams(max_tokens=128))[0]
    assert "".join(m.text for m in msgs) == want.text
    assert len([m for m in msgs if m.text]) > 2  # streamed, not one blob
    last = msgs[-1]
    assert last.finished and last.finish_reason == "length" and last.model == "tiny"
    assert last.prompt_tokens == len(worker.ref.encode_prompt(PROMPT))
    assert sum(m.token_count for m in msgs) == len(want.token_ids) == 128
    assert last.forward_passes == want.forwards
    assert not any(m.finished for m in msgs[:-1])

    info = worker.stub.DescribeText(DescribeTextRequest(), metadata=MD, timeout=10).models
    assert [(m.name, m.method, m.max_positions, m.default_max_tokens) for m in info] == [
        ("tiny", "d2f", MAX_POSITIONS, 128)]


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.5, "tau_conf": 0.7}],
                         ids=["greedy", "sampled-custom-tau"])
def test_skip_tokens_resumes_exactly(worker: Worker, sampling: dict[str, Any]) -> None:
    # No seed when sampling: the worker derives one from job_id, so the retry replays the stream.
    # (top_p 0.5 keeps the zero-logit EOS/MASK of the random model out of the sampled set.)
    full = worker.generate(job_id="resume", max_tokens=96, **sampling)
    text = "".join(m.text for m in full)
    seen = list(itertools.accumulate(m.token_count for m in full))
    i = next(i for i in range(1, len(full)) if full[i].token_count >= 2)
    edge, mid = seen[i - 1], seen[i - 1] + full[i].token_count // 2
    for skip in (edge, mid):  # where a retry of a broken stream starts; and mid-chunk
        resumed = worker.generate(job_id="resume", max_tokens=96, skip_tokens=skip, **sampling)
        tail = "".join(m.text for m in resumed)
        assert sum(m.token_count for m in resumed) == 96 - skip
        assert resumed[-1].finished and resumed[-1].forward_passes == full[-1].forward_passes
        if skip == edge:  # exactly what the first attempt had not yet delivered
            assert "".join(m.text for m in full[:i]) + tail == text
        elif not sampling:  # the text of exactly `skip` tokens, from the reference engine
            ids = worker.ref.generate([PROMPT], SamplingParams(max_tokens=96))[0].token_ids
            assert worker.ref.tokenizer.decode(ids[:skip]) + tail == text
        assert tail and text.endswith(tail)


@pytest.mark.parametrize("fields,message", [
    ({"prompt": "seven " * 1100}, f"exceeds the model's {MAX_POSITIONS} positions"),
    ({"model": "gpt-9"}, "unknown model 'gpt-9'; this worker serves 'tiny'"),
    ({"tau_conf": 1.5}, "tau_conf must be in [0, 1]"),
    ({"max_tokens": 5000}, "max_tokens must be in [1, 1000]"),
    ({"temperature": 0.5, "skip_tokens": 4}, "needs a seed or a job_id"),
])
def test_bad_requests_are_invalid_argument(worker: Worker, fields: dict[str, Any], message: str) -> None:
    req = GenerateTextRequest(**{"prompt": PROMPT, **fields})
    with pytest.raises(grpc.RpcError) as err:
        list(worker.stub.GenerateText(req, metadata=MD, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()


def wait_stopped(worker: Worker, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    # The request's end is seen first; its decode thread finishes the forward pass it is in.
    while ((st := worker.stats(job_id))["state"] == "running" or st["decoding"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # were decoding still going on, its forward count would keep growing
    later = worker.stats(job_id)
    assert later["forwards"] == st["forwards"], (st, later)
    return later


def _slow_call(worker: Worker, job_id: str, timeout: float = 60) -> Any:
    """A long generation, sent like the dispatcher sends it: with a call id (here: call-<job id>)."""
    md = (*MD, (CALL_ID_METADATA, f"call-{job_id}"))
    return worker.stub.GenerateText(GenerateTextRequest(job_id=job_id, prompt=PROMPT, **SLOW), metadata=md,
                                    timeout=timeout)


# Forward passes a cancelled call may still run after the caller gave up, while the cancel travels
# (proxy, CancelCall, the forward pass in progress): ~0.1-0.2 s of decoding here. A loop that kept
# going would run on to ~900 (one token per forward).
CANCEL_SLACK = 200


def _stopped_after_cancel(worker: Worker, job_id: str) -> None:
    """Call right after the caller gave the call up: decoding stops within CANCEL_SLACK forwards of
    where it was then (not "under half a run", which depends on how fast this host decodes)."""
    at_cancel = worker.stats(job_id)["forwards"]
    st = wait_stopped(worker, job_id)
    assert st["state"] == "cancelled" and st["forwards"] <= min(at_cancel + CANCEL_SLACK, SLOW["max_tokens"] - 1), (
        at_cancel, st)


def test_cancel_call_stops_decoding_on_the_replica(worker: Worker) -> None:
    """WorkerControlService.CancelCall alone, with the caller still connected: the call's decoding
    loop stops and its stream ends. This is what stops a call whose channel cancellation Ray
    Serve's proxy lost (services/workers/cancellation.py)."""
    call = _slow_call(worker, "named")
    assert next(call).token_count > 0
    assert worker.cancel_call("call-named", "named")  # this replica runs it
    _stopped_after_cancel(worker, "named")
    with pytest.raises(grpc.RpcError):
        list(call)  # the stream ends with an error status, not with a finished message

    # A cancel that overtakes its call (it reached the replica first): the call stops as it starts.
    assert not worker.cancel_call("call-overtaken", "overtaken")  # not running anywhere yet
    with pytest.raises(grpc.RpcError):
        list(_slow_call(worker, "overtaken"))
    _stopped_after_cancel(worker, "overtaken")


def test_cancelled_and_expired_calls_stop_decoding(worker: Worker) -> None:
    """What the dispatcher does when it gives a call up, cancelled or past its deadline: cancel it
    on the channel and name it to CancelCall. Decoding stops either way."""
    call = _slow_call(worker, "cancel")
    assert next(call).token_count > 0
    call.cancel()
    worker.cancel_call("call-cancel", "cancel")  # False when Serve's own cancellation got there first
    _stopped_after_cancel(worker, "cancel")

    with pytest.raises(grpc.RpcError) as err:
        list(_slow_call(worker, "deadline", timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    worker.cancel_call("call-deadline", "deadline")
    _stopped_after_cancel(worker, "deadline")

    t0 = time.monotonic()
    assert worker.generate(job_id="after", max_tokens=32, timeout=10)[-1].finished
    assert time.monotonic() - t0 < 5
