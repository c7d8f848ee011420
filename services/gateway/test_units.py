"""Fast unit tests: auth, token bucket, validation and config."""

from __future__ import annotations

import grpc
import pytest

from services.gateway.auth import Authenticator, TokenBucket, hash_key, load_keys
from services.gateway.config import AuthConfig, GatewayConfig, TextLimits
from services.gateway.rpc_errors import RpcError
from services.gateway.validation import check_job_id, text_violations
from tessera.v1 import text_pb2


def test_keys_from_env_are_hashed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEYS", f"alice:{hash_key('s3cret')}:5:2")
    auth = Authenticator(AuthConfig())
    assert auth.authenticate((("authorization", "Bearer s3cret"),)) == "alice"
    for md in ((), (("authorization", "Bearer nope"),), (("authorization", "Basic s3cret"),)):
        with pytest.raises(RpcError) as ei:
            auth.authenticate(md)
        assert ei.value.code == grpc.StatusCode.UNAUTHENTICATED
    auth.authenticate((("authorization", "Bearer s3cret"),))  # burst 2 spent
    with pytest.raises(RpcError) as ei:
        auth.authenticate((("authorization", "Bearer s3cret"),))
    assert ei.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and ei.value.retry_after_s > 0


def test_bad_key_config_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_API_KEYS", "alice:not-a-hash")
    with pytest.raises(ValueError, match="64 hex"):
        load_keys(AuthConfig())
    monkeypatch.delenv("TESSERA_API_KEYS")
    with pytest.raises(ValueError, match="no API keys"):
        Authenticator(AuthConfig())


def test_token_bucket_refills() -> None:
    b = TokenBucket(rate_per_s=1000.0, burst=1)
    assert b.take() == 0.0
    assert b.take() > 0.0
    b.stamp -= 0.01  # 10 ms later: 10 tokens refilled, capped at the burst of 1
    assert b.take() == 0.0


def test_text_validation_reports_every_field() -> None:
    limits = TextLimits(max_prompt_chars=10, max_tokens=64, models=["m"])
    req = text_pb2.TextRequest(model="x", prompt="y" * 11, params=text_pb2.TextParams(
        max_tokens=65, temperature=float("nan"), top_p=-0.1, block_size=-1, tau_add=1.5))
    fields = {f for f, _ in text_violations(req, limits)}
    assert fields == {"request.model", "request.prompt", "request.params.max_tokens", "request.params.temperature",
                      "request.params.top_p", "request.params.block_size", "request.params.tau_add"}
    assert text_violations(text_pb2.TextRequest(prompt="ok"), limits) == []
    with pytest.raises(RpcError):
        check_job_id("../etc")


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown gateway config keys"):
        GatewayConfig.from_dict({"prot": 1})
    cfg = GatewayConfig.from_dict({"port": 1234, "dispatcher": {"max_in_flight": 3}})
    assert cfg.port == 1234 and cfg.dispatcher.max_in_flight == 3


def test_key_lookup_finds_the_right_key_among_many(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ",".join(f"k{i}:{hash_key(f'token-{i}').upper()}" for i in range(2000))  # upper case is accepted
    monkeypatch.setenv("TESSERA_API_KEYS", keys)
    auth = Authenticator(AuthConfig())
    for i in (0, 1234, 1999):
        assert auth.owner((("authorization", f"Bearer token-{i}"),)) == f"k{i}"
    with pytest.raises(RpcError):
        auth.owner((("authorization", "Bearer token-2000"),))


def test_the_gateway_refuses_the_temperatures_the_workers_sampler_refuses() -> None:
    from models import sampling
    from services.gateway import validation

    assert (validation.MIN_TEMPERATURE, validation.MAX_TEMPERATURE) == (sampling.MIN_TEMPERATURE,
                                                                        sampling.MAX_TEMPERATURE)
    limits = TextLimits()
    for t, ok in ((0.0, True), (1e-38, False), (0.005, False), (0.01, True), (10.0, True), (10.5, False)):
        req = text_pb2.TextRequest(prompt="p", params=text_pb2.TextParams(temperature=t))
        bad = [f for f, _ in text_violations(req, limits)]
        assert (bad == []) == ok, (t, bad)
        try:  # the worker's sampler, with the float32 the wire carries rounded as the worker rounds it
            sampling.SamplingParams(temperature=round(req.params.temperature, 6) or req.params.temperature)
            sampler_ok = True
        except ValueError:
            sampler_ok = False
        assert sampler_ok == ok, t
