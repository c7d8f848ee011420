"""The image and understanding engines in-process (no Ray): progress, batching, determinism, previews,
resumption and refused requests, on tiny random checkpoints."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lab.training.images.tiny import NATIVE, PATCHES
from services.workers.image.config import ImageArgs
from services.workers.image.engine import ImageEngine
from services.workers.protocol import InvalidRequestError
from services.workers.understanding.config import UnderstandingArgs
from services.workers.understanding.engine import UnderstandingEngine
from tessera.worker.v1 import worker_pb2 as w

torch.set_num_threads(1)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def image_engine(ckpt: Path, backend: str) -> ImageEngine:
    cfg = ImageArgs.load({"model": {"name": "tiny", "backend": backend, "steps": 3,
                                                 "model_dir": str(ckpt / f"shapes-{backend}")},
                                       "batching": {"max_batch_size": 8, "max_wait_ms": 50}})
    return ImageEngine(cfg)


def _max_pixel_diff(a: bytes, b: bytes) -> int:
    pa, pb = (np.asarray(Image.open(io.BytesIO(x)).convert("RGB"), dtype=np.int16) for x in (a, b))
    return int(np.abs(pa - pb).max())


async def generate(eng: ImageEngine, prompt: str, **sampling: Any) -> list[w.GenerateImageResponse]:
    req = w.GenerateImageRequest(job_id=prompt, prompt=prompt, sampling=w.ImageSampling(**sampling))
    return [m async for m in eng.generate(req)]


@pytest.mark.parametrize("backend", ["orthus", "nextstep"])
def test_batched_generation_streams_progress_and_matches_unbatched(image_checkpoints: Path, backend: str) -> None:
    async def go() -> None:
        eng = image_engine(image_checkpoints, backend)
        await eng.start()
        prompts = ["a red circle", "a blue square", "two green triangles"]
        outs = await asyncio.gather(*(generate(eng, p, seed=i, width=40, height=24, preview=i == 0)
                                      for i, p in enumerate(prompts)))
        assert eng.batcher.batches == [3]
        for i, msgs in enumerate(outs):
            steps = [m.step for m in msgs[:-1]]
            assert [(s.patches_done, s.patches_total) for s in steps] == [(k, PATCHES) for k in range(1, PATCHES + 1)]
            assert all(bool(s.preview_png) == (i == 0) for s in steps)
            out = msgs[-1].output
            assert (out.width, out.height, out.batch_size, out.seed, out.steps) == (40, 24, 3, i, 3)
            assert Image.open(io.BytesIO(out.png)).size == (40, 24)
        preview = Image.open(io.BytesIO(outs[0][0].step.preview_png))
        assert preview.size == (16, 16) and preview.format == "PNG"
        alone = await generate(eng, prompts[1], seed=1, width=40, height=24)
        assert eng.batcher.batches[-1] == 1
        # Per-request noise and padded length: batching changes nothing but float32 BLAS rounding for
        # fewer rows (test_batch_invariance.py), at most a grey level or two.
        assert _max_pixel_diff(alone[-1].output.png, outs[1][-1].output.png) <= 2
        other = await generate(eng, prompts[1], seed=2, width=40, height=24)
        assert other[-1].output.png != alone[-1].output.png

        src = outs[0][-1].output.png
        edit = [m async for m in eng.edit(w.EditImageRequest(job_id="e", image=src, instruction="make it green",
                                                             sampling=w.ImageSampling(steps=2)))]
        assert [m.step.patches_done for m in edit[:-1]] == list(range(1, PATCHES + 1))
        assert Image.open(io.BytesIO(edit[-1].output.png)).size == (NATIVE, NATIVE)  # the checkpoint's VAE sample_size
        await eng.shutdown()
    run(go())


@pytest.mark.parametrize("fields,message", [
    ({"prompt": "  "}, "prompt is empty"),
    ({"model": "sdxl"}, "unknown model 'sdxl'"),
    ({"sampling": w.ImageSampling(steps=500)}, "steps must be in [1, 200]"),
    ({"sampling": w.ImageSampling(width=2000)}, "width must be in [8, 1024]"),
    ({"sampling": w.ImageSampling(guidance_scale=50)}, "guidance_scale must be in [1, 20]"),
])
def test_bad_image_requests_are_refused(image_checkpoints: Path, fields: dict[str, Any], message: str) -> None:
    eng = image_engine(image_checkpoints, "orthus")  # plan() needs no loaded model
    req = w.GenerateImageRequest(**{"prompt": "a red circle", **fields})
    with pytest.raises(InvalidRequestError) as err:
        eng.plan("t2i", "j", req.model, req.prompt, req.sampling)
    assert message in str(err.value)
    with pytest.raises(InvalidRequestError, match="image is not a decodable"):
        eng.plan("edit", "j", "", "make it green", w.ImageSampling(), b"not an image")


def test_understanding_batches_streams_and_resumes(image_checkpoints: Path) -> None:
    async def go() -> None:
        cfg = UnderstandingArgs.load({"model": {"name": "tiny",
                                                             "model_dir": str(image_checkpoints / "shapes-orthus")},
                                                   "batching": {"max_wait_ms": 50}})
        eng = UnderstandingEngine(cfg)
        await eng.start()
        image = Image.new("RGB", (48, 48), (200, 30, 30))
        buf = io.BytesIO()
        image.save(buf, format="PNG")

        async def ask(max_tokens: int, skip: int = 0, question: str = "what colour is the circle?") -> list[Any]:
            req = w.UnderstandRequest(job_id="q", image=buf.getvalue(), question=question, max_tokens=max_tokens,
                                      skip_tokens=skip)
            return [m async for m in eng.understand(req)]

        outs = await asyncio.gather(ask(6), ask(3), ask(6, question="how many shapes are there?"))
        assert eng.batcher.batches == [3]
        for msgs, limit in zip(outs, (6, 3, 6), strict=True):
            last = msgs[-1]
            assert last.finished and last.model == "tiny" and last.prompt_tokens > 4
            n = sum(m.token_count for m in msgs)
            assert n <= limit and (last.finish_reason == "length") == (n == limit)
        full = "".join(m.text for m in outs[0])
        alone = await ask(6)
        assert "".join(m.text for m in alone) == full  # greedy, batch-independent
        if sum(m.token_count for m in outs[0]) >= 3:
            tail = await ask(6, skip=2)
            assert full.endswith("".join(m.text for m in tail)) and sum(m.token_count for m in tail) >= 1
        with pytest.raises(InvalidRequestError, match="max_tokens must be in"):
            await ask(1000)
        await eng.shutdown()
    run(go())
