"""Text-to-image and editing with NextStep (brief §2.2, §2.3).

Prompt layout, per CFG row (left-padded to the longest row or to `pad_to`, `bos` first like the new pipeline):
    text-to-image  cond:    bos caption[" " positive]  <|image_area|>"{gh}*{gw}" boi
                   uncond:  bos negative               <|image_area|>"{gh}*{gw}" boi   (only when cfg != 1)
    editing        [image + instruction (+ positive)], [image + negative], [negative]
                   where "image" = <|image_area|>"{gh}*{gw}" boi placeholder×(gh·gw) eoi, its VAE
                   tokens projected into the placeholder slots (duplicated for rows 1 and 2).
                   The original (brief §2.2 `_build_captions`) drops the guidance rows it does not use:
                   cfg == 1 -> [cond]; cfg_img == 1 -> [cond, negative]. `GenerationConfig.
                   original_rows=False` keeps all three (the tiny models' layout).
The original tokenizes whole strings (bos_token + caption, "<|image_area|>32*32", image_str +
instruction); an `encode` with an `after(prev_id, text)` method (models.images.parts.ContextEncoder)
encodes each text where it follows its special token there; a plain `encode` encodes it alone.
All rows of all requests run in ONE backbone batch: prefill, then one position per image token.
Each step: c = image_out_projector(h_last) -> FM head (one call over every row) -> CFG -> token
[-> LayerNorm if use_norm] -> the SAME token is fed back to every CFG row. Exactly gh·gw tokens;
no EOI is generated and the LM head is not called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from models.nextstep.head import Generators, Sampler, sample_token
from models.nextstep.model import NextStep, causal_mask, decode_mask
from models.nextstep.vae import ImageTokenizer, token_layer_norm

Encode = Callable[[str], list[int]]  # text -> ids, no special tokens added (TextTokenizer.encode)
# Serving hook called after each image token (tokens done, newest tokens (B, 64)); it never changes
# results, and raising from it stops generation (cancellation in the image worker).
TokenHook = Callable[[int, torch.Tensor], None]


@dataclass(slots=True)
class GenerationConfig:
    cfg_scale: float = 7.5
    cfg_img_scale: float = 2.0  # editing only
    steps: int = 50
    shift: float = 1.0  # the editing example uses 3.2
    use_norm: bool = True
    sampler: Sampler = "ode"
    last_step_size: float = 0.0  # 0.04 reproduces the Aug-2025 SDE schedule
    positive_prompt: str = ""
    negative_prompt: str = ""
    use_cache: bool = True  # False recomputes the whole sequence every step (tests, debugging)
    # Edit rows as the original builds them (fewer rows when a scale is 1); False: always three rows.
    original_rows: bool = True

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.shift <= 0:
            raise ValueError(f"steps and shift must be positive, got {self.steps}, {self.shift}")


# ---- prompt layout ------------------------------------------------------------------------------


def _after(encode: Encode, prev: int | None, text: str) -> list[int]:
    """`text` encoded where it follows the special token `prev` in the original's string (see the
    module docstring), or alone when `encode` has no `after`."""
    after = getattr(encode, "after", None)
    return after(prev, text) if after is not None else encode(text)


def image_area_ids(model: NextStep, encode: Encode, grid: tuple[int, int]) -> list[int]:
    """`<|image_area|>{gh}*{gw}`: the special token, then the digits as ordinary text."""
    area = model.config.image_area_id
    return [area, *_after(encode, area, f"{grid[0]}*{grid[1]}")]


def image_context_ids(model: NextStep, encode: Encode, grid: tuple[int, int]) -> list[int]:
    """An input image in a prompt: area, boi, one placeholder per token, eoi."""
    c = model.config
    return [*image_area_ids(model, encode, grid), c.boi, *[c.image_placeholder_id] * (grid[0] * grid[1]), c.eoi]


def output_prefix_ids(model: NextStep, encode: Encode, grid: tuple[int, int]) -> list[int]:
    """What every row ends with: the output image's area and boi; generation starts after it."""
    return [*image_area_ids(model, encode, grid), model.config.boi]


def _text(caption: str, suffix: str) -> str:
    return f"{caption} {suffix}" if suffix else caption


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [R, T] and valid [R, T] (False on padding), padded on the left like the reference.

    T is the longest row, or `length` when given. Serving passes a length that depends on the request
    alone (engine batch keys): then a row's layout, hence its positions (which count the padding, as the
    reference's `position_ids = cache_position` do) and its attention over the padded keys, are the same
    whatever it is batched with. In exact arithmetic only relative positions matter, but in bfloat16 q/k
    are rounded after RoPE at their absolute angle, and SDPA sums over the padded length in other blocks:
    a one-ulp difference that the autoregressive loop, the ODE and CFG amplify into visible pixels.
    """
    longest = max(len(r) for r in rows)
    if length is not None and length < longest:
        raise ValueError(f"cannot pad rows of up to {longest} tokens to {length}")
    t = longest if length is None else length
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), t), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, t - len(r):] = torch.tensor(list(r), dtype=torch.long)
            valid[i, t - len(r):] = True
    return ids, valid


def _bos(model: NextStep) -> list[int]:
    return [] if model.config.bos_token_id is None else [model.config.bos_token_id]


def t2i_rows(model: NextStep, encode: Encode, prompts: Sequence[str], grid: tuple[int, int],
             gen: GenerationConfig) -> list[list[int]]:
    """[cond × B] or, with guidance, [cond × B, uncond × B]."""
    bos = _bos(model)
    prev = bos[0] if bos else None
    tail = output_prefix_ids(model, encode, grid)
    rows = [bos + _after(encode, prev, _text(p, gen.positive_prompt)) + tail for p in prompts]
    if gen.cfg_scale != 1.0:
        rows += [bos + _after(encode, prev, gen.negative_prompt) + tail for _ in prompts]
    return rows


def edit_groups(gen: GenerationConfig) -> int:
    """CFG row groups of an edit: 3, or as the original (brief §2.2) 1 without text guidance and 2
    without image guidance."""
    if not gen.original_rows:
        return 3
    return 1 if gen.cfg_scale == 1.0 else 2 if gen.cfg_img_scale == 1.0 else 3


def edit_rows(model: NextStep, encode: Encode, instructions: Sequence[str], in_grid: tuple[int, int],
              out_grid: tuple[int, int], gen: GenerationConfig) -> list[list[int]]:
    """[image + instruction × B, image + negative × B, negative × B], the original's fewer groups
    with `original_rows` (edit_groups: [cond] or [cond, negative])."""
    bos = _bos(model)
    eoi, prev = model.config.eoi, bos[0] if bos else None
    image = image_context_ids(model, encode, in_grid)
    tail = output_prefix_ids(model, encode, out_grid)
    cond = [bos + image + _after(encode, eoi, _text(s, gen.positive_prompt)) + tail for s in instructions]
    image_neg = [bos + image + _after(encode, eoi, gen.negative_prompt) + tail for _ in instructions]
    neg = [bos + _after(encode, prev, gen.negative_prompt) + tail for _ in instructions]
    return {1: cond, 2: cond + neg, 3: cond + image_neg + neg}[edit_groups(gen)]


# ---- the autoregressive loop ------------------------------------------------------------------------


@torch.no_grad()
def generate_tokens(model: NextStep, ids: torch.Tensor, valid: torch.Tensor, batch: int, num_tokens: int,
                    gen: GenerationConfig, image_tokens: torch.Tensor | None = None,
                    generator: Generators = None, on_token: TokenHook | None = None) -> torch.Tensor:
    """ids/valid [K·B, T] (K CFG row groups of B requests) -> image tokens (B, num_tokens, 64)."""
    rows, t = ids.shape
    if rows % batch:
        raise ValueError(f"{rows} rows are not a multiple of batch {batch}")
    k = rows // batch
    # Positions count the left padding (`position_ids = cache_position`); the last token is never fed back.
    if t + num_tokens - 1 > model.config.max_position_embeddings:
        raise ValueError(f"{t} prompt positions + {num_tokens} image tokens exceed max_position_embeddings "
                         f"{model.config.max_position_embeddings}")
    device = model.backbone.embed.weight.device
    ids, valid = ids.to(device), valid.to(device)
    full_valid = torch.cat([valid, torch.ones(rows, num_tokens, dtype=torch.bool, device=device)], dim=1)
    prompt = model.embed(ids, None if image_tokens is None else image_tokens.to(device))

    cache = model.new_cache(rows, t + num_tokens) if gen.use_cache else None
    h = model.hidden(prompt, mask=causal_mask(valid), cache=cache, commit=t)[:, -1]
    fed: list[torch.Tensor] = []  # projected tokens, for the no-cache path
    out: list[torch.Tensor] = []
    for i in range(num_tokens):
        tok = sample_token(model.image_head, model.condition(h), batch, cfg_scale=gen.cfg_scale,
                           cfg_img_scale=gen.cfg_img_scale, steps=gen.steps, shift=gen.shift, sampler=gen.sampler,
                           last_step_size=gen.last_step_size, generator=generator,
                           token_dim=model.config.token_dim)
        if gen.use_norm:
            tok = token_layer_norm(tok)
        out.append(tok)
        if on_token is not None:
            on_token(i + 1, tok)
        if i == num_tokens - 1:
            break  # the reference runs one more backbone step whose output it never reads
        e = model.image_in_projector(tok).to(prompt.dtype).repeat(k, 1)[:, None]  # same token, every row
        if cache is not None:
            h = model.hidden(e, mask=decode_mask(full_valid, t + i + 1), cache=cache, commit=1)[:, -1]
        else:
            fed.append(e)
            seq = torch.cat([prompt, *fed], dim=1)
            h = model.hidden(seq, mask=causal_mask(full_valid[:, : seq.shape[1]]))[:, -1]
    return torch.stack(out, dim=1)


# ---- end-to-end --------------------------------------------------------------------------------


@torch.no_grad()
def text_to_image_tokens(model: NextStep, encode: Encode, prompts: Sequence[str], grid: tuple[int, int],
                         gen: GenerationConfig, generator: Generators = None, on_token: TokenHook | None = None,
                         pad_to: int | None = None) -> torch.Tensor:
    """Image tokens (B, gh·gw, 64) for B prompts; pad_to: the rows' padded length (see `left_pad`)."""
    ids, valid = left_pad(t2i_rows(model, encode, prompts, grid, gen), model.config.pad_id, pad_to)
    return generate_tokens(model, ids, valid, len(prompts), grid[0] * grid[1], gen, generator=generator,
                           on_token=on_token)


@torch.no_grad()
def edit_image_tokens(model: NextStep, encode: Encode, src: torch.Tensor, instructions: Sequence[str],
                      in_grid: tuple[int, int], out_grid: tuple[int, int], gen: GenerationConfig,
                      generator: Generators = None, on_token: TokenHook | None = None,
                      pad_to: int | None = None) -> torch.Tensor:
    """Edited image tokens (B, out gh·gw, 64) for source tokens src (B, in gh·gw, 64) + instructions."""
    if src.shape[0] != len(instructions):
        raise ValueError(f"{src.shape[0]} images for {len(instructions)} instructions")
    ids, valid = left_pad(edit_rows(model, encode, instructions, in_grid, out_grid, gen), model.config.pad_id, pad_to)
    # Placeholder slots in row-major order: the cond rows, then (3 groups) the image + negative rows.
    image_tokens = torch.cat([src.reshape(-1, src.shape[-1])] * (2 if edit_groups(gen) == 3 else 1))
    return generate_tokens(model, ids, valid, len(instructions), out_grid[0] * out_grid[1], gen,
                           image_tokens=image_tokens, generator=generator, on_token=on_token)


@torch.no_grad()
def text_to_image(model: NextStep, vae: ImageTokenizer, encode: Encode, prompts: Sequence[str], height: int = 512,
                  width: int = 512, gen: GenerationConfig | None = None, generator: Generators = None,
                  on_token: TokenHook | None = None) -> torch.Tensor:
    """Images (B, 3, height, width) in [-1, 1]; a list of generators gives each prompt its own noise."""
    grid = vae.grid(height, width)
    tokens = text_to_image_tokens(model, encode, prompts, grid, gen or GenerationConfig(), generator, on_token)
    return vae.decode(tokens, grid)


@torch.no_grad()
def edit_image(model: NextStep, vae: ImageTokenizer, encode: Encode, images: torch.Tensor,
               instructions: Sequence[str], gen: GenerationConfig | None = None, generator: Generators = None,
               out_size: tuple[int, int] | None = None, on_token: TokenHook | None = None) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] + instructions -> edited images; three CFG rows per request."""
    gen = gen or GenerationConfig(negative_prompt="Copy original image.", shift=3.2)
    if images.shape[0] != len(instructions):
        raise ValueError(f"{images.shape[0]} images for {len(instructions)} instructions")
    in_grid = vae.grid(images.shape[-2], images.shape[-1])
    out_grid = vae.grid(*out_size) if out_size else in_grid
    tokens = edit_image_tokens(model, encode, vae.encode(images), instructions, in_grid, out_grid, gen, generator,
                               on_token)
    return vae.decode(tokens, out_grid)
