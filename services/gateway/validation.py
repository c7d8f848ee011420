"""Request validation: every problem becomes a field violation; nothing invalid is enqueued."""

from __future__ import annotations

import math

from services.common.images import ImageError, inspect_image
from services.gateway.config import ImageLimits, TextLimits, UnderstandingLimits
from services.gateway.rpc_errors import invalid_argument
from tessera.v1 import images_pb2, text_pb2, understanding_pb2

Violations = list[tuple[str, str]]
# The worker's sampler refuses the same (models/sampling.py; test_units checks the two agree): below
# MIN_TEMPERATURE, logits / temperature overflows and sampling fails on NaN probabilities.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 10.0


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
    # float32 on the wire: 0.01 arrives as 0.0099999998, which must still mean 0.01 (the worker rounds alike).
    if not (p.temperature == 0.0 or MIN_TEMPERATURE <= round(p.temperature, 6) <= MAX_TEMPERATURE):
        v.append((f"{pp}.temperature", f"must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], "
                                       f"got {p.temperature:.3g}"))
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


def _model(model: str, models: list[str], field: str) -> Violations:
    if model and model not in models:
        return [(field, f"unknown model {model!r}; available: {', '.join(models)}")]
    return []


def _text(text: str, limit: int, field: str) -> Violations:
    if not text.strip():
        return [(field, "must not be empty")]
    if len(text) > limit:
        return [(field, f"is {len(text)} characters; the limit is {limit}")]
    return []


def image_bytes_violations(data: bytes, limits: ImageLimits, field: str) -> Violations:
    """Size first (cheap), then format, dimensions and a full decode (services.common.images)."""
    if len(data) > limits.max_image_bytes:
        return [(field, f"is {len(data)} bytes; the limit is {limits.max_image_bytes}")]
    try:
        inspect_image(data, limits.min_side, limits.max_side)
    except ImageError as e:
        return [(field, str(e))]
    return []


def image_params_violations(p: images_pb2.ImageParams, limits: ImageLimits, prefix: str, edit: bool) -> Violations:
    v: Violations = []
    for name in ("width", "height"):
        x = getattr(p, name)
        if x and not limits.min_side <= x <= limits.max_side:
            v.append((f"{prefix}.{name}", f"must be in [{limits.min_side}, {limits.max_side}] (0 = the model's "
                                          f"resolution), got {x}"))
    if not 0 <= p.steps <= limits.max_steps:
        v.append((f"{prefix}.steps", f"must be in [0, {limits.max_steps}] (0 = model default), got {p.steps}"))
    scales = ("guidance_scale", "image_guidance_scale") if edit else ("guidance_scale",)
    for name in scales:
        x = getattr(p, name)
        if x and not (math.isfinite(x) and 1.0 <= x <= 20.0):
            v.append((f"{prefix}.{name}", f"must be in [1, 20] (0 = model default), got {x}"))
    return v


def image_request_violations(req: images_pb2.ImageRequest, limits: ImageLimits,
                             prefix: str = "request") -> Violations:
    return [*_model(req.model, limits.models, f"{prefix}.model"),
            *_text(req.prompt, limits.max_prompt_chars, f"{prefix}.prompt"),
            *image_params_violations(req.params, limits, f"{prefix}.params", edit=False)]


def edit_request_violations(req: images_pb2.ImageEditRequest, limits: ImageLimits,
                            prefix: str = "request") -> Violations:
    return [*_model(req.model, limits.models, f"{prefix}.model"),
            *_text(req.instruction, limits.max_prompt_chars, f"{prefix}.instruction"),
            *image_bytes_violations(req.image, limits, f"{prefix}.image"),
            *image_params_violations(req.params, limits, f"{prefix}.params", edit=True)]


def understanding_violations(req: understanding_pb2.UnderstandingRequest, limits: UnderstandingLimits,
                             images: ImageLimits, prefix: str = "request") -> Violations:
    v = [*_model(req.model, limits.models, f"{prefix}.model"),
         *_text(req.question, limits.max_question_chars, f"{prefix}.question"),
         *image_bytes_violations(req.image, images, f"{prefix}.image")]
    if not 0 <= req.max_tokens <= limits.max_tokens:
        v.append((f"{prefix}.max_tokens", f"must be in [0, {limits.max_tokens}] (0 = model default), "
                                          f"got {req.max_tokens}"))
    return v


def check(violations: Violations) -> None:
    if violations:
        raise invalid_argument(violations)


def check_job_id(job_id: str) -> None:
    if not job_id or len(job_id) > 64 or not job_id.isalnum():
        raise invalid_argument([("job_id", "must be a job id returned by the API")])

