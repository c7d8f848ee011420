"""Plain Python results of text generation, image generation and understanding, and the model list.

Users of `generate_text` / `stream_text` get dataclasses rather than protobuf messages: they print
readably, compare by value and don't tie user code to generated-code details (enum ints, HasField).
Job APIs return the protobuf messages directly because their shape (oneofs, google.rpc.Status) is the
API's own and wrapping it would only hide fields.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tessera.v1 import common_pb2, images_pb2, jobs_pb2, models_pb2, text_pb2, understanding_pb2

__all__ = ["ImageProgress", "ImageResult", "ImageUsage", "ModelInfo", "TextChunk", "TextResult", "Usage",
           "finish_reason_name", "text_result_from_job"]

_FINISH_PREFIX = "FINISH_REASON_"


@dataclass(frozen=True)
class Usage:
    """Token accounting and timings of one generation (all times in seconds, measured by the gateway)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    forward_passes: int = 0
    tokens_per_forward: float = 0.0
    time_to_first_chunk_s: float = 0.0
    total_s: float = 0.0
    queue_s: float = 0.0


@dataclass(frozen=True)
class TextResult:
    """A finished generation. `finish_reason` is "stop", "length", "cancelled" (or "unspecified").

    `request_id` is the gateway's x-request-id of the call that delivered it ("" when read from a job
    record); it says how the result travelled, not what it is, so equality ignores it.
    """

    text: str
    finish_reason: str
    model: str
    job_id: str
    usage: Usage
    request_id: str = field(default="", compare=False)


@dataclass(frozen=True)
class TextChunk:
    """Text that became final during streaming; `event_id` lets `watch_job` resume right after it."""

    text: str
    token_count: int
    total_tokens: int
    job_id: str
    event_id: str


def finish_reason_name(value: int) -> str:
    """Lower-case name of a FinishReason; values newer than this SDK read as "unspecified"."""
    try:
        name = common_pb2.FinishReason.Name(value)
    except ValueError:
        return "unspecified"
    return name.removeprefix(_FINISH_PREFIX).lower()


def usage_from_proto(usage: text_pb2.TextUsage) -> Usage:
    """Convert TextUsage (float32 fields are rounded to drop float32 noise such as 2.299999952)."""
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        forward_passes=usage.forward_passes,
        tokens_per_forward=round(usage.tokens_per_forward, 6),
        time_to_first_chunk_s=usage.time_to_first_chunk_s,
        total_s=usage.total_s,
        queue_s=usage.queue_s,
    )


def result_from_proto(result: text_pb2.TextResult, job_id: str, request_id: str = "") -> TextResult:
    """Convert a TextResult message; the job id travels beside it in every response that carries one."""
    return TextResult(
        text=result.text,
        finish_reason=finish_reason_name(result.finish_reason),
        model=result.model,
        job_id=job_id,
        usage=usage_from_proto(result.usage),
        request_id=request_id,
    )


def chunk_from_proto(chunk: text_pb2.TextChunk, job_id: str, event_id: str) -> TextChunk:
    """Convert a TextChunk message with the ids of the stream message that carried it."""
    return TextChunk(text=chunk.text, token_count=chunk.token_count, total_tokens=chunk.total_tokens,
                     job_id=job_id, event_id=event_id)


def text_result_from_job(job: jobs_pb2.Job) -> TextResult | None:
    """The text result of a job, or None while it has none (not finished, failed, or not a text job)."""
    if not job.HasField("result") or job.result.WhichOneof("kind") != "text":
        return None
    return result_from_proto(job.result.text, job.id)


@dataclass(frozen=True)
class ImageUsage:
    """How an image was made: patches, denoising steps, how many requests shared its batched model call,
    and timings in seconds (model call as measured by the worker; total and queue by the gateway)."""

    patches: int = 0
    steps: int = 0
    batch_size: int = 0
    generate_s: float = 0.0
    total_s: float = 0.0
    queue_s: float = 0.0


@dataclass(frozen=True)
class ImageResult:
    """A generated or edited image: PNG bytes and their size (`request_id` as in `TextResult`)."""

    png: bytes
    width: int
    height: int
    model: str
    job_id: str
    seed: int
    usage: ImageUsage
    request_id: str = field(default="", compare=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the PNG to `path`."""
        with open(path, "wb") as f:
            f.write(self.png)


@dataclass(frozen=True)
class ImageProgress:
    """Progress of an image job: patches done out of the total, and an optional low-resolution PNG preview."""

    patches_done: int
    patches_total: int
    preview_png: bytes
    job_id: str
    event_id: str

    @property
    def fraction(self) -> float:
        return self.patches_done / self.patches_total if self.patches_total else 0.0


def image_result_from_proto(result: images_pb2.ImageResult, job_id: str, request_id: str = "") -> ImageResult:
    u = result.usage
    usage = ImageUsage(patches=u.patches, steps=u.steps, batch_size=u.batch_size, generate_s=u.generate_s,
                       total_s=u.total_s, queue_s=u.queue_s)
    return ImageResult(png=result.png, width=result.width, height=result.height, model=result.model, job_id=job_id,
                       seed=result.seed, usage=usage, request_id=request_id)


def image_progress_from_proto(p: images_pb2.ImageProgress, job_id: str, event_id: str) -> ImageProgress:
    return ImageProgress(patches_done=p.patches_done, patches_total=p.patches_total, preview_png=p.preview_png,
                         job_id=job_id, event_id=event_id)


def understanding_result_from_proto(result: understanding_pb2.UnderstandingResult, job_id: str,
                                    request_id: str = "") -> TextResult:
    """An answer reads like a text generation result (text, finish reason, usage)."""
    return TextResult(text=result.text, finish_reason=finish_reason_name(result.finish_reason), model=result.model,
                      job_id=job_id, usage=usage_from_proto(result.usage), request_id=request_id)


@dataclass(frozen=True)
class ModelInfo:
    """A model the gateway serves and its limits; fields (and their names) are those of tessera.v1.ModelInfo.

    `kinds` lists the job kinds it serves ("text", "image", "edit", "understand"); limits are 0 when unknown.
    """

    name: str
    kinds: tuple[str, ...]
    is_default: bool = False
    ready: bool = False
    method: str = ""
    max_positions: int = 0
    max_tokens: int = 0
    default_max_tokens: int = 0
    max_prompt_tokens: int = 0
    max_prompt_chars: int = 0


def model_info_from_proto(m: models_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(name=m.name, kinds=tuple(m.kinds), is_default=m.is_default, ready=m.ready, method=m.method,
                     max_positions=m.max_positions, max_tokens=m.max_tokens, default_max_tokens=m.default_max_tokens,
                     max_prompt_tokens=m.max_prompt_tokens, max_prompt_chars=m.max_prompt_chars)
