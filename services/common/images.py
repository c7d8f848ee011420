"""Image bytes in and out of the services: validation (gateway), decoding and resizing (workers), PNG.

Only PNG and JPEG are accepted. Dimensions are read from the header before any pixel is decoded, so
an oversized or bomb-like image is refused cheaply; then the pixels are decoded in full, because a
header can be valid while the data behind it is not.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

FORMATS = ("PNG", "JPEG")


class ImageError(ValueError):
    """Image bytes that cannot be used (the message says why, for a field violation)."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int


def inspect_image(data: bytes, min_side: int = 1, max_side: int = 1 << 14) -> ImageInfo:
    """Check that `data` is a decodable PNG or JPEG with both sides in [min_side, max_side]."""
    if not data:
        raise ImageError("is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
            info = ImageInfo(str(img.format), *img.size)
            if not (min_side <= info.width <= max_side and min_side <= info.height <= max_side):
                raise ImageError(f"is {info.width}x{info.height}; each side must be in [{min_side}, {max_side}]")
            img.load()  # the pixels must decode too, not just the header
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"is not a decodable {' or '.join(FORMATS)} image ({type(e).__name__}: {e})") from e
    return info


def decode_rgb(data: bytes, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Decode PNG/JPEG bytes to uint8 RGB (H, W, 3), resized to `size` (side or (width, height))."""
    try:
        img = Image.open(io.BytesIO(data), formats=list(FORMATS)).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"is not a decodable image ({type(e).__name__}: {e})") from e
    if size is not None:
        wh = (size, size) if isinstance(size, int) else size
        if img.size != wh:
            # Area averaging: a large photo shrinks to the model's few pixels without aliasing.
            img = img.resize(wh, Image.Resampling.BOX if img.width >= wh[0] else Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).copy()


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample uint8 RGB (H, W, 3) to (height, width) keeping hard edges (the tiny models draw flat shapes)."""
    if image.shape[1] == width and image.shape[0] == height:
        return image
    img = Image.fromarray(image, "RGB").resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(img, dtype=np.uint8).copy()


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """Area-average uint8 RGB (H, W, 3) down to side x side (previews)."""
    img = Image.fromarray(image, "RGB").resize((side, side), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def encode_png(image: np.ndarray) -> bytes:
    """uint8 RGB (H, W, 3) -> PNG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return buf.getvalue()
