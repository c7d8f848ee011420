"""A checkpoint directory's shared parts: the VAE, the tokenizer and the square resolution."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8
from models.prompting import load_tokenizer_config, token_text
from models.tokenizer import TextCodec, TextTokenizer

log = logging.getLogger(__name__)


class ImageCodec(Protocol):
    """Images in [-1, 1] <-> tokens (B, N, C) in raster order: NextStep's tokenizer
    (models.nextstep.vae.ImageTokenizer, also the tiny checkpoints' vae/) or Chameleon's VQGAN
    (models.orthus.vqgan.VQTokenizer)."""

    def grid(self, height: int, width: int) -> tuple[int, int]: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...


@dataclass(slots=True)
class ImageParts:
    vae: ImageCodec
    tokenizer: TextCodec
    resolution: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.vae.grid(self.resolution, self.resolution)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    # The VAE runs one image at a time: its convolutions round differently for another batch size
    # (bfloat16: up to 5/255 on the tiny checkpoints), and it is cheap next to the autoregressive loop.

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> VAE tokens (B, N, C)."""
        p = next(self.vae.parameters())
        x = from_uint8(torch.from_numpy(images)).to(p.device, p.dtype)
        return torch.cat([self.vae.encode(x[i:i + 1]) for i in range(x.shape[0])])

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """VAE tokens (B, N, C) -> images (B, 3, res, res) in [-1, 1]."""
        p = next(self.vae.parameters())
        tokens = tokens.to(p.device, p.dtype)
        return torch.cat([self.vae.decode(tokens[i:i + 1], self.grid) for i in range(tokens.shape[0])])

    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """VAE tokens (B, N, C) -> uint8 (B, res, res, 3)."""
        return to_uint8(self.decode(tokens)).cpu().numpy()

    def decode_partial(self, sofar: torch.Tensor) -> np.ndarray:
        """A preview: the first patches' tokens (B, done, C) -> uint8 (B, res, res, 3), the patches still
        to come at zero, the tokens' mean (flat grey)."""
        tokens = torch.zeros(sofar.shape[0], self.num_patches, sofar.shape[-1])
        tokens[:, :sofar.shape[1]] = sofar
        return self.decode_tokens(tokens)


def native_resolution(model_dir: Path) -> int:
    """The square size a checkpoint was trained at: its VAE's sample_size, or, without a vae/ directory,
    its config.json's vq_config.resolution (an Orthus checkpoint's own VQGAN; 512 when not given). The
    shapes models' tokens each cover one cell of their world, so another size would cut shapes across
    tokens."""
    if not (model_dir / "vae").exists():
        try:
            vq = json.loads((model_dir / "config.json").read_text()).get("vq_config")
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"{model_dir / 'config.json'}: {e}") from e
        if vq is not None:
            return int(vq.get("resolution", 512))
    try:
        return int(json.loads((model_dir / "vae" / "config.json").read_text())["sample_size"])
    except (OSError, KeyError, ValueError) as e:
        raise FileNotFoundError(f"{model_dir / 'vae' / 'config.json'} gives no sample_size ({e}); "
                                "set model.resolution") from e


def load_parts(model_dir: Path, resolution: int, device: str, dtype: torch.dtype) -> ImageParts:
    """The VAE and tokenizer of `model_dir`; resolution 0: the checkpoint's own (native_resolution)."""
    for need in ("tokenizer.json", "vae/config.json"):
        if not (model_dir / need).exists():
            raise FileNotFoundError(f"{model_dir / need} not found: an image checkpoint directory holds the model, "
                                    "tokenizer.json and vae/ (python -m lab.training.images)")
    vae = ImageTokenizer.from_pretrained(model_dir / "vae", dtype=dtype).to(device).eval()
    parts = ImageParts(vae, TextTokenizer(model_dir), resolution or native_resolution(model_dir))
    parts.grid  # noqa: B018 - raises now if the resolution does not fit the VAE
    return parts


# ---- prompt encoding as the originals do it ---------------------------------------------------------


class ContextEncoder:
    """`encode(text)` plus `after(prev_id, text)`: the ids of `text` where it follows the special token
    `prev_id` in one string. The originals tokenize whole strings ("<|end_of_image|>instruction",
    "<eoss>question", bos_token + caption); a tokenizer splits at special tokens first, but a
    pre-tokenizer may still treat the start of the string differently from the start of a later
    segment (SentencePiece's prefix space), so encoding the segment alone could differ. The prompt
    builders use `after` where it exists and plain encoding otherwise (the tiny models' format)."""

    def __init__(self, tok: TextTokenizer) -> None:
        self.tok = tok

    def __call__(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def after(self, prev_id: int | None, text: str) -> list[int]:
        if prev_id is None or not text:
            return self.tok.encode(text)
        lead = self.tok.tok.id_to_token(prev_id)
        ids = self.tok.encode(lead + text) if lead is not None else []
        if not ids or ids[0] != prev_id:  # not a special token of this tokenizer: encode the text alone
            return self.tok.encode(text)
        return ids[1:]


_UNSET = object()


def special_id(model_dir: Path, tok: TextTokenizer, key: str) -> Any:
    """The id of tokenizer_config.json's `key` ("bos_token", "sep_token"; a string or an AddedToken
    dict), None when the key is null, `_UNSET` when the key is absent."""
    cfg = load_tokenizer_config(model_dir)
    if key not in cfg:
        return _UNSET
    content = token_text(cfg[key])
    if content is None:
        return None
    tid = tok.token_id(content)
    if tid is None:
        raise ValueError(f"{model_dir / 'tokenizer_config.json'}: {key} {content!r} is not in tokenizer.json")
    return tid


def adopt(owner: Any, field: str, value: Any, model_dir: Path) -> None:
    """Set owner.field to the tokenizer's id (unless absent): the originals build prompts from the
    tokenizer, so where config.json says otherwise the tokenizer wins (logged)."""
    if value is _UNSET or getattr(owner, field) == value:
        return
    log.warning("%s: %s %r from the tokenizer replaces config.json's %r", model_dir, field, value,
                getattr(owner, field))
    setattr(owner, field, value)
