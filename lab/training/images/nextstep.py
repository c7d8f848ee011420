"""Train a tiny NextStep on the shapes world: LM cross-entropy on text + flow matching on image tokens.

Layouts are what models/nextstep/generate.py builds at inference (t2i_rows, edit_rows):
    t2i    bos caption area "2*2" boi | x_0 .. x_{N-1}
    edit   bos area "2*2" boi src eoi instruction area "2*2" boi | x_0 .. x_{N-1}
Image tokens are the shared VAE's LayerNormed tokens (the generator LayerNorms its samples too,
`use_norm`). Condition dropout trains the guidance rows with an empty negative prompt: T2I uncond
`bos area "2*2" boi`, editing [image + negative] and [negative] (pass negative_prompt="" at inference).
Flow matching (head.py conventions): t ~ U(0, 1), x_t = t x + (1 - t) eps, target v = x - eps; each
condition is repeated `fm_head_batch_mul` times with fresh t and noise (the config's genloss_batch_mul).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from lab.training.images.data import (
    BOS_TOKEN,
    IMAGE_SIZE,
    NEXTSTEP_SPECIALS,
    Example,
    FeatureBank,
    ImageBatch,
    ImageStream,
    Layout,
    Phase,
    Segment,
    make_pool,
    special_id,
    train_phases,
    with_context_noise,
    with_samples,
)
from lab.worlds.tokenizer import EOS_TOKEN
from models.nextstep.config import NextStepConfig
from models.nextstep.head import sample_token
from models.nextstep.model import NextStep, causal_mask
from models.nextstep.vae import ImageTokenizer, token_layer_norm

GRID = (IMAGE_SIZE // 16, IMAGE_SIZE // 16)  # 16 pixels per token: one token per grid cell


@dataclass(slots=True)
class NextStepRecipe:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    head_width: int = 256
    head_layers: int = 3
    steps: int = 9000  # 2282 s beside Orthus on 2026-11-29 (10000 ran the command past 90 min)
    lr: float = 1e-3
    batch: int = 32
    pool: int = 12000
    fm_batch_mul: int = 4
    lm_weight: float = 0.1  # the released 0.01 is tuned for a pretrained LM; ours learns text from scratch
    drop_text: float = 0.1
    drop_all: float = 0.05
    mix: tuple[float, float] = (0.5, 0.5)  # t2i, edit
    relative_scenes: int = 1  # draws of relative prompts in the main and edit pools (make_pool)
    seed: int = 0
    # Edit phase, after the main steps: an edit-heavy pool of its own at a lower rate, fresh optimizer.
    # Editing is learnt late (the target copies the source cell by cell across an instruction of any
    # length): 0.38 after the main phase; a 1500-step trial of this phase gave 0.52, T2I unchanged.
    edit_steps: int = 4500  # 1604 s beside Orthus on 2026-11-29
    edit_mix: tuple[float, float] = (0.2, 0.8)
    edit_lr: float = 3e-4
    edit_seed: int = 7
    # Edit and relative phases: feed back this share of the generated-image tokens as the model's own samples
    # (`own_samples`, `self_steps` Euler steps each). Teacher-forced on clean tokens an earlier checkpoint
    # got 199/200 held-out edits right, free-running on its own samples 105/200 (cfg 1): the backbone
    # had never seen a sampled token. With it the recipe's model gets 149/200 (was 124/200).
    self_rate: float = 0.5
    self_steps: int = 5
    # Relative phase, last: relative prompts drawn `rel_scenes` times (one matching scene per draw) beside
    # captions and edits, scheduled sampling as in the edit phase. With one scene per prompt the model
    # got 0.22 on held-out relative prompts and only 0.44 teacher-forced on training ones: a prompt
    # that fixes only the order of two shapes needs several layouts to be learnt as a rule. This phase on
    # the edit-phase model: held-out 0.22 -> 0.28 (200-problem bench), T2I 0.935 and edits 0.75 kept.
    rel_steps: int = 1500  # 506 s on 2026-11-29 (Orthus had finished)
    rel_mix: tuple[float, float] = (0.4, 0.6)
    rel_scenes: int = 6
    rel_lr: float = 1e-4
    rel_seed: int = 13
    # Gaussian noise of this std on the generated image's input tokens in every phase (targets and source
    # images stay clean), as Orthus's context_noise: the VAE's tokens leak their neighbours' content, and
    # fed renders with the cells still to come blanked, the checkpoint before it drew the right token 0.03 of the
    # time (teacher-forced 1.0). 1500-step fine-tunes of that model, 96 held-out problems, std 0 / 0.3 /
    # 0.5 / 1.0 -> T2I 0.92 / 0.96 / 0.93 / 0.72, relative 0.17 / 0.34 / 0.25 / 0.30, edits 0.60 / 0.62 /
    # 0.59 / 0.47. The tokens are LayerNormed: unit variance over their 64 channels. The recipe with it in
    # every phase (and 9000 main steps, not 8000), 200 problems: T2I 0.94 -> 1.00, relative 0.20 -> 0.52,
    # edits 0.685 -> 0.985; blanked-leak T2I (`--context`) 0.03 -> 0.28.
    context_noise: float = 0.3

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.kv_heads, self.head_width, self.head_layers) <= 0:
            raise ValueError("model sizes must be positive")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"bad head geometry: hidden {self.hidden}, heads {self.heads}, kv {self.kv_heads}")
        if self.steps <= 0 or self.lr <= 0 or self.batch <= 0 or self.fm_batch_mul <= 0:
            raise ValueError("steps, lr, batch and fm_batch_mul must be positive")
        if not (0 <= self.drop_text <= 1 and 0 <= self.drop_all <= 1 and self.drop_text + self.drop_all <= 1):
            raise ValueError("dropout probabilities must be in [0, 1] and sum to <= 1")
        for name in ("mix", "edit_mix", "rel_mix"):
            m = getattr(self, name)
            if len(m) != 2 or min(m) < 0 or sum(m) <= 0:
                raise ValueError(f"{name} must be two non-negative weights, got {m}")
        if self.edit_steps < 0 or self.edit_lr <= 0:
            raise ValueError("edit_steps must be >= 0 and edit_lr positive")
        if self.relative_scenes < 0 or self.rel_scenes < 0:
            raise ValueError("relative_scenes and rel_scenes must be >= 0")
        if self.rel_steps < 0 or self.rel_lr <= 0:
            raise ValueError("rel_steps must be >= 0 and rel_lr positive")
        if not 0 <= self.self_rate <= 1 or self.self_steps <= 0:
            raise ValueError("self_rate must be in [0, 1] and self_steps positive")
        if self.context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {self.context_noise}")


def make_config(tok: Tokenizer, vae: ImageTokenizer, r: NextStepRecipe) -> NextStepConfig:
    if vae.token_dim != 16 * 2 * 2:
        raise ValueError(f"NextStep expects 16-channel latents in 2x2 patches, got token_dim {vae.token_dim}")
    sp = {k: special_id(tok, v) for k, v in NEXTSTEP_SPECIALS.items()}
    return NextStepConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=r.hidden, num_layers=r.layers, num_heads=r.heads,
        num_kv_heads=r.kv_heads, intermediate_size=4 * r.hidden, max_position_embeddings=256, rms_norm_eps=1e-6,
        boi=sp["boi"], eoi=sp["eoi"], image_placeholder_id=sp["placeholder"], image_area_id=sp["area"],
        pad_token_id_added=sp["pad"], bos_token_id=special_id(tok, BOS_TOKEN),
        eos_token_id=special_id(tok, EOS_TOKEN), pad_token_id=None, latent_channels=16, patch_size=2,
        fm_head_dim=r.head_width, fm_head_layers=r.head_layers, fm_head_batch_mul=r.fm_batch_mul,
        lm_loss_weight=r.lm_weight,
        prompt_format="tessera",  # trained for three edit rows at any scale (models/nextstep/generate.py)
    )


def new_model(cfg: NextStepConfig, seed: int = 0) -> NextStep:
    torch.manual_seed(seed)
    return NextStep(cfg)


def make_layout(tok: Tokenizer, cfg: NextStepConfig, r: NextStepRecipe) -> Layout:
    bos = [cfg.bos_token_id] if cfg.bos_token_id is not None else []
    area = [cfg.image_area_id, *tok.encode(f"{GRID[0]}*{GRID[1]}").ids]

    def layout(ex: Example, bank: FeatureBank, rng: random.Random) -> tuple[list[Segment], list[int]]:
        if ex.target is None:
            raise ValueError(f"NextStep trains on t2i and edit examples only, got {ex.task}")
        text = tok.encode(ex.text).ids
        u = rng.random()
        out: list[Segment] = [[*area, cfg.boi], (bank[ex.target], True)]
        if ex.task == "t2i":
            return [[*bos, *([] if u < r.drop_text else text)], *out], []
        assert ex.source is not None
        if u < r.drop_all:
            return [bos, *out], []
        text = [] if u < r.drop_all + r.drop_text else text
        return [[*bos, *area, cfg.boi], (bank[ex.source], False), [cfg.eoi, *text], *out], []

    return layout


@torch.no_grad()
def own_samples(model: NextStep, batch: ImageBatch, rate: float, steps: int, gen: torch.Generator) -> torch.Tensor:
    """batch.feats with a `rate` share of the generated-image tokens replaced by the model's own samples,
    each drawn from the state teacher-forced on the clean tokens before it (parallel scheduled sampling)."""
    h = model(batch.ids, batch.feats, mask=causal_mask(batch.valid))  # no dropout: train mode samples as eval
    c = model.condition(h.flatten(0, 1)[batch.target_pos - 1])
    tok = token_layer_norm(sample_token(model.image_head, c, c.shape[0], steps=steps, generator=gen,
                                        token_dim=model.config.token_dim))
    return with_samples(batch, tok, rate, gen)


def nextstep_loss(model: NextStep, batch: ImageBatch, gen: torch.Generator, self_rate: float = 0.0,
                  self_steps: int = 5, context_noise: float = 0.0) -> torch.Tensor:
    cfg = model.config
    feats = batch.feats if batch.feats.numel() else None
    if feats is not None and self_rate and batch.target_pos.numel():
        feats = own_samples(model, batch, self_rate, self_steps, gen)
    if feats is not None:
        # After the own samples: at inference the context is sampled tokens, so they get the noise too.
        feats = with_context_noise(batch, feats, context_noise, gen)
    h = model(batch.ids, feats, mask=causal_mask(batch.valid))
    loss = h.new_zeros(())
    if (batch.lm_targets != -100).any():
        ce = F.cross_entropy(model.logits(h).flatten(0, 1).float(), batch.lm_targets.flatten(), ignore_index=-100)
        loss = loss + cfg.lm_loss_weight * ce
    if batch.target_pos.numel():
        k = cfg.fm_head_batch_mul
        # The token at slot p is generated from the state at p - 1 (boi for the first token).
        c = model.condition(h.flatten(0, 1)[batch.target_pos - 1]).repeat(k, 1)
        x = batch.target_feats.repeat(k, 1)
        t = torch.rand(x.shape[0], generator=gen).to(x.device)
        eps = torch.randn(x.shape, generator=gen).to(x.device)
        xt = t[:, None] * x + (1 - t[:, None]) * eps
        loss = loss + cfg.image_loss_weight * F.mse_loss(model.image_head(xt, t, c).float(), x - eps)
    return loss


def build_stream(tok: Tokenizer, vae: ImageTokenizer, r: NextStepRecipe,
                 examples: list[Example] | None = None) -> tuple[NextStepConfig, FeatureBank, ImageStream]:
    cfg = make_config(tok, vae, r)
    examples = examples if examples is not None else make_pool(r.pool, r.seed + 1, dict(zip(
        ("t2i", "edit"), r.mix, strict=True)), r.relative_scenes)
    bank = FeatureBank(vae, examples)
    stream = ImageStream(examples, bank, make_layout(tok, cfg, r), cfg.image_placeholder_id, cfg.pad_id,
                         r.batch, r.seed)
    return cfg, bank, stream


def phases(model: NextStep, tok: Tokenizer, vae: ImageTokenizer, r: NextStepRecipe,
           stream: ImageStream | None = None) -> list[Phase]:
    """The recipe's phases in order; `stream` is the main phase's, if already built."""
    def self_loss(b: ImageBatch, g: torch.Generator) -> torch.Tensor:
        return nextstep_loss(model, b, g, r.self_rate, r.self_steps, r.context_noise)

    edit = dataclasses.replace(r, mix=r.edit_mix, seed=r.edit_seed)
    rel = dataclasses.replace(r, mix=r.rel_mix, seed=r.rel_seed, relative_scenes=r.rel_scenes)
    return [
        Phase("nextstep", r.steps, r.lr, r.seed,
              lambda: stream if stream is not None else build_stream(tok, vae, r)[2]),
        Phase("nextstep-edit", r.edit_steps, r.edit_lr, r.edit_seed, lambda: build_stream(tok, vae, edit)[2], 50,
              self_loss),
        Phase("nextstep-rel", r.rel_steps, r.rel_lr, r.rel_seed, lambda: build_stream(tok, vae, rel)[2], 50,
              self_loss),
    ]


def train_nextstep(tok: Tokenizer, vae: ImageTokenizer, r: NextStepRecipe, device: str = "cpu",
                   log_every: int = 100) -> tuple[NextStep, list[float]]:
    cfg, _, stream = build_stream(tok, vae, r)
    model = new_model(cfg, r.seed).to(device)

    def loss(b: ImageBatch, g: torch.Generator) -> torch.Tensor:
        return nextstep_loss(model, b, g, context_noise=r.context_noise)

    losses = train_phases(model, phases(model, tok, vae, r, stream), r.batch, loss, log_every, device)
    return model.eval(), losses
