"""(f) KV-cached generation == recomputation; prompt layout; padded CFG rows == separate rows;
text-to-image and editing end to end on tiny models."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.nextstep.conftest import TINY, encode, tiny_model, tiny_vae
from models.nextstep.generate import (
    GenerationConfig,
    edit_image,
    edit_image_tokens,
    edit_rows,
    generate_tokens,
    left_pad,
    t2i_rows,
    text_to_image,
    text_to_image_tokens,
)
from models.nextstep.model import causal_mask
from models.nextstep.vae import token_layer_norm

BOI, EOI, PH, AREA, PAD = TINY["boi"], TINY["eoi"], TINY["image_placeholder_id"], TINY["image_area_id"], 63


def test_t2i_prompt_layout() -> None:
    m = tiny_model()
    gen = GenerationConfig(positive_prompt="good", negative_prompt="bad")
    rows = t2i_rows(m, encode, ["a cat", "dog"], (32, 32), gen)
    tail = [AREA, *encode("32*32"), BOI]
    assert rows == [[1, *encode("a cat good"), *tail], [1, *encode("dog good"), *tail],
                    [1, *encode("bad"), *tail], [1, *encode("bad"), *tail]]
    assert len(t2i_rows(m, encode, ["x"], (2, 2), GenerationConfig(cfg_scale=1.0))) == 1
    ids, valid = left_pad(rows, PAD)
    assert ids.shape == (4, len(rows[0])) and not valid[1, 0] and valid[1, -1] and ids[1, 0] == PAD


def test_edit_prompt_layout() -> None:
    m = tiny_model()
    gen = GenerationConfig(negative_prompt="copy")
    rows = edit_rows(m, encode, ["make it red"], (2, 2), (2, 3), gen)
    image = [AREA, *encode("2*2"), BOI, PH, PH, PH, PH, EOI]
    tail = [AREA, *encode("2*3"), BOI]
    assert rows == [[1, *image, *encode("make it red"), *tail], [1, *image, *encode("copy"), *tail],
                    [1, *encode("copy"), *tail]]


def test_padded_cfg_rows_equal_separate_rows() -> None:
    """Left-padded rows in one batch give each row's last hidden state as if run alone."""
    m = tiny_model(seed=5)
    rows = [[1, 7, 8, 9, 10, 11, 12, AREA, BOI], [1, 20, AREA, BOI], [1, 30, 31, 32, AREA, BOI]]
    ids, valid = left_pad(rows, PAD)
    with torch.no_grad():
        batched = m(ids, mask=causal_mask(valid))[:, -1]
        for i, r in enumerate(rows):
            alone = m(torch.tensor([r]), mask=causal_mask(torch.ones(1, len(r), dtype=torch.bool)))[:, -1]
            assert torch.allclose(batched[i], alone[0], atol=1e-5)


@pytest.mark.parametrize(("sampler", "rows"), [("ode", 2), ("sde", 2), ("ode", 3)])
def test_kv_cached_generation_equals_recomputation(sampler: str, rows: int) -> None:
    m = tiny_model(seed=6)
    gen = GenerationConfig(cfg_scale=4.0, cfg_img_scale=1.5, steps=3, shift=2.0, sampler=sampler,
                           negative_prompt="no")
    if rows == 2:
        ids, valid = left_pad(t2i_rows(m, encode, ["a red square", "sky"], (2, 2), gen), PAD)
        images = None
    else:
        ids, valid = left_pad(edit_rows(m, encode, ["redder", "blue"], (2, 2), (2, 2), gen), PAD)
        images = torch.randn(2 * 2 * 4, 64)  # 2 requests × 4 tokens, rows 0..1 and 2..3

    def run(use_cache: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(11)
        return generate_tokens(m, ids, valid, 2, 5, replace(gen, use_cache=use_cache), image_tokens=images,
                               generator=g)

    cached, recomputed = run(True), run(False)
    assert cached.shape == (2, 5, 64)
    assert torch.allclose(cached, recomputed, atol=1e-5), (cached - recomputed).abs().max()
    # use_norm: every generated token is LayerNorm'd before it is kept and fed back
    assert torch.allclose(cached, token_layer_norm(cached), atol=1e-5)


def test_text_to_image_and_edit_end_to_end() -> None:
    m, vae = tiny_model(seed=8), tiny_vae()
    gen = GenerationConfig(steps=2)
    imgs = text_to_image(m, vae, encode, ["one", "two two"], 32, 48, gen, torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 32, 48) and torch.isfinite(imgs).all()
    edit = GenerationConfig(steps=2, shift=3.2, negative_prompt="Copy original image.")
    out = edit_image(m, vae, encode, imgs.clamp(-1, 1), ["more", "less"], edit, torch.Generator().manual_seed(0))
    assert out.shape == imgs.shape and torch.isfinite(out).all()


def test_left_pad_to_a_given_length() -> None:
    ids, valid = left_pad([[5, 6], [7]], PAD, length=4)
    assert ids.tolist() == [[PAD, PAD, 5, 6], [PAD, PAD, PAD, 7]]
    assert valid.tolist() == [[False, False, True, True], [False, False, False, True]]
    with pytest.raises(ValueError, match="cannot pad rows of up to 2 tokens to 1"):
        left_pad([[5, 6]], PAD, length=1)


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_padded_length_makes_a_request_independent_of_its_batch_mates() -> None:
    """Serving contract, in bfloat16 where it shows: padded to the longest row (the reference), a short
    prompt's positions and padded key length follow its longest batch mate, and one-ulp differences
    grow through the loop; padded to a length of its own (`pad_to`), its tokens are exactly its own."""
    m = tiny_model(seed=8).to(torch.bfloat16)
    short, long = "a cat", "a much longer prompt about dogs and cats on a sofa"
    t2i = GenerationConfig(steps=4, cfg_scale=3.0)
    alone = text_to_image_tokens(m, encode, [short], (2, 2), t2i, _gens(3), pad_to=96)
    for prompts, seeds, at in (([short, long], (3, 4), 0), ([long, short], (4, 3), 1)):
        batched = text_to_image_tokens(m, encode, prompts, (2, 2), t2i, _gens(*seeds), pad_to=96)
        assert torch.equal(alone[0], batched[at])
    reference = text_to_image_tokens(m, encode, [short, long], (2, 2), t2i, _gens(3, 4))
    assert (reference[0] - text_to_image_tokens(m, encode, [short], (2, 2), t2i, _gens(3))[0]).abs().max() > 1e-3

    edit = GenerationConfig(steps=4, cfg_scale=3.0, cfg_img_scale=1.5, negative_prompt="copy")
    src = torch.randn(2, 4, 64, generator=torch.Generator().manual_seed(0))
    alone = edit_image_tokens(m, encode, src[:1], [short], (2, 2), (2, 2), edit, _gens(3), pad_to=96)
    batched = edit_image_tokens(m, encode, src[[1, 0]], [long, short], (2, 2), (2, 2), edit, _gens(4, 3), pad_to=96)
    assert torch.equal(alone[0], batched[1])
