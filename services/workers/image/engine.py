"""The image engine: validates requests, batches concurrent ones through the micro-batcher and streams
per-patch progress (with optional previews), then the PNG.

The model runs on the batcher's thread, so the replica's event loop stays free for other requests and
health checks. Cancellation: a caller that goes away leaves the queue, or stops being reported to; a
batch whose callers have all gone stops at its next patch (the progress hook raises).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import torch

from models.images import ImageBackend, ImageJob, ImageParts, load_backend, native_resolution
from models.nextstep.vae import to_uint8
from models.sampling import request_seed
from services.common.images import ImageError, decode_rgb, encode_png, resize_nearest, shrink
from services.workers.batching import Batch, Done, MicroBatcher
from services.workers.image.config import ImageArgs
from services.workers.protocol import InvalidRequestError
from services.workers.runtime import check_model_name, prepare_replica
from tessera.worker.v1.worker_pb2 import (
    EditImageRequest,
    EditImageResponse,
    GenerateImageRequest,
    GenerateImageResponse,
    ImageOutput,
    ImageSampling,
    ImageStep,
)

MIN_SIDE, MAX_SIDE = 8, 1024


@dataclass(slots=True)
class Rendered:
    png: bytes
    width: int
    height: int


class ImageEngine:
    def __init__(self, cfg: ImageArgs) -> None:
        self.cfg = cfg
        self.backend: ImageBackend | None = None
        self.parts: ImageParts | None = None
        self.batcher: MicroBatcher[ImageJob, Rendered] = MicroBatcher(
            self._run_batch, cfg.batching, key=lambda j: j.batch_key, name="image")

    async def start(self) -> None:
        m = self.cfg.model
        prepare_replica(m)
        self.backend, self.parts = await asyncio.to_thread(
            load_backend, m.backend, m.path, m.resolution, m.device, getattr(torch, m.dtype), m.pad_bucket,
            m.nextstep if m.backend == "nextstep" else None)

    @functools.cached_property
    def resolution(self) -> int:
        """The square size the model generates and edits at (config, or the checkpoint's native size)."""
        return self.cfg.model.resolution or native_resolution(self.cfg.model.path)

    @property
    def patches_total(self) -> int:
        assert self.parts is not None, "start() first"
        return self.parts.num_patches

    async def check_health(self) -> None:
        if self.backend is None:
            raise RuntimeError("image engine is not started")

    async def shutdown(self) -> None:
        await self.batcher.close()
        self.backend = None

    # ---- requests -------------------------------------------------------------------------------

    def plan(self, kind: str, job_id: str, model: str, text: str, s: ImageSampling,
             image: bytes = b"") -> ImageJob:
        """Validate a request and resolve its defaults; raises InvalidRequestError."""
        m = self.cfg.model
        check_model_name(model, m)
        if not text.strip():
            raise InvalidRequestError("prompt is empty" if kind == "t2i" else "instruction is empty")
        if not 0 <= s.steps <= m.max_steps:
            raise InvalidRequestError(f"steps must be in [1, {m.max_steps}] (0 = default {m.steps}), got {s.steps}")
        for name in ("width", "height"):
            v = getattr(s, name)
            if v and not MIN_SIDE <= v <= MAX_SIDE:
                raise InvalidRequestError(f"{name} must be in [{MIN_SIDE}, {MAX_SIDE}] (0 = native), got {v}")
        for name in ("guidance_scale", "image_guidance_scale"):
            v = getattr(s, name)
            if v and not (math.isfinite(v) and 1.0 <= v <= 20.0):
                raise InvalidRequestError(f"{name} must be in [1, 20] (0 = default), got {v}")
        source = None
        if kind == "edit":
            try:
                source = decode_rgb(image, self.resolution)
            except ImageError as e:
                raise InvalidRequestError(f"image {e}") from e
        seed = s.seed if s.HasField("seed") else request_seed(job_id or text)
        return ImageJob(kind, text, s.steps or m.steps, round(s.guidance_scale or m.guidance_scale, 4),
                        round(s.image_guidance_scale or m.image_guidance_scale, 4) if kind == "edit" else 0.0,
                        seed, s.width or self.resolution, s.height or self.resolution, s.preview, source)

    async def _stream(self, job: ImageJob) -> AsyncIterator[ImageStep | ImageOutput]:
        assert self.backend is not None, "start() first"
        # Part of the batch key, worked out once: only requests of one padded length share a model
        # call, which keeps an image independent of its batch mates (models/images).
        job.pad_to = self.backend.padded_length(job)
        async for ev in self.batcher.submit(job):
            if isinstance(ev, Done):
                r: Rendered = ev.result
                yield ImageOutput(png=r.png, width=r.width, height=r.height, model=self.cfg.model.name,
                                  batch_size=ev.batch_size, generate_s=ev.seconds, steps=job.steps, seed=job.seed)
            else:
                yield ev

    async def generate(self, req: GenerateImageRequest) -> AsyncIterator[GenerateImageResponse]:
        job = self.plan("t2i", req.job_id, req.model, req.prompt, req.sampling)
        async for ev in self._stream(job):
            yield (GenerateImageResponse(step=ev) if isinstance(ev, ImageStep)
                   else GenerateImageResponse(output=ev))

    async def edit(self, req: EditImageRequest) -> AsyncIterator[EditImageResponse]:
        job = self.plan("edit", req.job_id, req.model, req.instruction, req.sampling, req.image)
        async for ev in self._stream(job):
            yield EditImageResponse(step=ev) if isinstance(ev, ImageStep) else EditImageResponse(output=ev)

    # ---- the model thread -----------------------------------------------------------------------

    def _run_batch(self, batch: Batch[ImageJob]) -> Sequence[Rendered]:
        assert self.backend is not None and self.parts is not None
        jobs, total = batch.requests, self.patches_total
        done_tokens: list[torch.Tensor] = []  # [B, C] per patch, kept only when someone wants previews

        def on_patch(done: int, newest: torch.Tensor) -> None:
            batch.check()  # every caller gone: stop here, not after the whole image
            want = [j.preview and batch.wanted(i) for i, j in enumerate(jobs)]
            previews: list[bytes] = [b""] * len(jobs)
            if any(want):
                done_tokens.append(newest.detach().float().cpu())
                previews = self._previews(done_tokens, want)
            for i in range(len(jobs)):
                batch.progress(i, ImageStep(patches_done=done, patches_total=total, preview_png=previews[i]))

        with torch.no_grad():
            images = self.backend.generate(jobs, on_patch)
        pixels = to_uint8(images).cpu().numpy()
        out = []
        for j, img in zip(jobs, pixels, strict=True):
            out.append(Rendered(encode_png(resize_nearest(img, j.width, j.height)), j.width, j.height))
        return out

    def _previews(self, done_tokens: list[torch.Tensor], want: list[bool]) -> list[bytes]:
        """Low-resolution PNGs of the patches so far (`ImageParts.decode_partial`) for the rows that want one."""
        assert self.parts is not None
        rows = [i for i, w in enumerate(want) if w]
        pixels = self.parts.decode_partial(torch.stack(done_tokens, dim=1)[rows])  # [B, done, C] -> wanted rows
        side = self.cfg.model.preview_size
        out = [b""] * len(want)
        for k, i in enumerate(rows):
            out[i] = encode_png(shrink(pixels[k], side))
        return out
