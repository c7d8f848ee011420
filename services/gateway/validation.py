"""Request validation: every problem becomes a field violation; nothing invalid is enqueued."""

from __future__ import annotations

import math

from services.common.rpc_errors import invalid_argument
from services.gateway.config import TextLimits
from tessera.v1 import text_pb2


def text_violations(req: text_pb2.TextRequest, limits: TextLimits, prefix: str = "request") -> list[tuple[str, str]]:
    v: list[tuple[str, str]] = []
    if req.model and req.model not in limits.models:
        v.append((f"{prefix}.model", f"unknown model {req.model!r}; available: {', '.join(limits.models)}"))
    if not req.prompt.strip():
        v.append((f"{prefix}.prompt", "must not be empty"))
    elif len(req.prompt) > limits.max_prompt_chars:
        v.append((f"{prefix}.prompt", f"is {len(req.prompt)} characters; the limit is {limits.max_prompt_chars}"))
    p, pp = req.params, f"{prefix}.params"
    if not 0 <= p.max_tokens <= limits.max_tokens:
        v.append((f"{pp}.max_tokens", f"must be in [0, {limits.max_tokens}] (0 = model default), got {p.max_tokens}"))
    if not (math.isfinite(p.temperature) and 0.0 <= p.temperature <= 10.0):
        v.append((f"{pp}.temperature", f"must be in [0, 10], got {p.temperature}"))
    if not (math.isfinite(p.top_p) and 0.0 <= p.top_p <= 1.0):
        v.append((f"{pp}.top_p", f"must be in (0, 1] (0 = off), got {p.top_p}"))
    if not 0 <= p.block_size <= 256:
        v.append((f"{pp}.block_size", f"must be in [0, 256] (0 = model default), got {p.block_size}"))
    for name in ("tau_add", "tau_act", "tau_conf"):
        if p.HasField(name):
            x = getattr(p, name)
            if not (math.isfinite(x) and 0.0 <= x <= 1.0):
                v.append((f"{pp}.{name}", f"must be in [0, 1], got {x}"))
    return v


def check_text(req: text_pb2.TextRequest, limits: TextLimits, prefix: str = "request") -> None:
    if violations := text_violations(req, limits, prefix):
        raise invalid_argument(violations)


def check_job_id(job_id: str) -> None:
    if not job_id or len(job_id) > 64 or not job_id.isalnum():
        raise invalid_argument([("job_id", "must be a job id returned by the API")])

