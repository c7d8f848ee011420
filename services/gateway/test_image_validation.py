"""Image, edit and understanding validation: every problem becomes a field violation."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from services.common.images import decode_rgb, encode_png, inspect_image
from services.gateway.config import ImageLimits, UnderstandingLimits
from services.gateway.validation import (
    edit_request_violations,
    image_request_violations,
    understanding_violations,
)
from tessera.v1 import images_pb2, understanding_pb2

LIMITS = ImageLimits(max_prompt_chars=20, max_image_bytes=4096, min_side=8, max_side=64, max_steps=10,
                     models=["m"])


def png(w: int = 16, h: int = 16) -> bytes:
    return encode_png(np.full((h, w, 3), 200, dtype=np.uint8))


def jpeg(w: int = 16, h: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def fields(violations: list[tuple[str, str]]) -> dict[str, str]:
    return dict(violations)


def test_valid_requests_pass() -> None:
    assert image_request_violations(images_pb2.ImageRequest(prompt="a red circle"), LIMITS) == []
    for data in (png(), jpeg(64, 8)):
        req = images_pb2.ImageEditRequest(image=data, instruction="make it green",
                                          params=images_pb2.ImageParams(width=32, steps=10, image_guidance_scale=2))
        assert edit_request_violations(req, LIMITS) == []
    q = understanding_pb2.UnderstandingRequest(image=png(), question="what colour?", max_tokens=4)
    assert understanding_violations(q, UnderstandingLimits(max_tokens=4, models=["m"]), LIMITS) == []


def test_generation_params_are_checked() -> None:
    req = images_pb2.ImageRequest(model="x", prompt=" ", params=images_pb2.ImageParams(
        width=4, height=65, steps=11, guidance_scale=float("nan")))
    got = fields(image_request_violations(req, LIMITS))
    assert set(got) == {"request.model", "request.prompt", "request.params.width", "request.params.height",
                        "request.params.steps", "request.params.guidance_scale"}
    assert "must not be empty" in got["request.prompt"]
    long = images_pb2.ImageRequest(prompt="x" * 21, params=images_pb2.ImageParams(guidance_scale=0.5))
    assert set(fields(image_request_violations(long, LIMITS))) == {"request.prompt", "request.params.guidance_scale"}


@pytest.mark.parametrize("data,message", [
    (b"", "is empty"),
    (b"GIF89a" + b"\0" * 64, "not a decodable PNG or JPEG"),
    (b"hello, not an image", "not a decodable"),
    (png()[:40], "not a decodable"),  # a valid header, then the pixel data is cut off
    (png(4, 16), "is 4x16; each side must be in [8, 64]"),
    (png(16, 65), "is 16x65"),
    (b"\x89PNG" + b"\0" * 5000, "is 5004 bytes; the limit is 4096"),
])
def test_bad_images_are_field_violations(data: bytes, message: str) -> None:
    req = images_pb2.ImageEditRequest(image=data, instruction="")
    got = fields(edit_request_violations(req, LIMITS, prefix="spec.edit"))
    assert message in got["spec.edit.image"], got
    assert "spec.edit.instruction" in got
    q = understanding_pb2.UnderstandingRequest(image=data, question="q", max_tokens=99)
    got_q = fields(understanding_violations(q, UnderstandingLimits(max_tokens=8, models=["m"]), LIMITS))
    assert set(got_q) == {"request.image", "request.max_tokens"}


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    # A 20000x20000 PNG header with a tiny body: the size check must fire without inflating anything.
    raw = zlib.compress(b"\0" * 100)
    ihdr = (20000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")
    with pytest.raises(ValueError, match=r"20000x20000|decodable"):
        inspect_image(bomb, 8, 1024)


def test_decode_resizes_to_the_model_resolution() -> None:
    img = decode_rgb(jpeg(64, 40), 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert decode_rgb(png(32, 32)).shape == (32, 32, 3)
