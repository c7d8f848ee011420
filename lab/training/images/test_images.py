"""Fast checks of the image training code: batches, objectives, overfitting, checkpoints, the bench."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from lab.bench import image as bench
from lab.training.images import data
from lab.training.images import nextstep as ns
from lab.training.images import orthus as ot
from lab.training.images import vae as tv
from lab.training.images.__main__ import build_parser
from models.nextstep.checkpoint import load_nextstep, save_nextstep
from models.nextstep.vae import ImageTokenizer
from models.orthus.checkpoint import load_orthus, save_orthus

torch.set_num_threads(1)  # tiny models; the box is shared with training jobs

O_TINY = ot.OrthusRecipe(hidden=32, layers=2, heads=2, head_width=32, head_blocks=1, codebook=16, batch=6, pool=12)
N_TINY = ns.NextStepRecipe(hidden=32, layers=2, heads=2, kv_heads=1, head_width=32, head_layers=1, batch=6,
                           pool=12)


@pytest.fixture(scope="module")
def tok() -> Any:
    return data.train_tokenizer(100)


@pytest.fixture(scope="module")
def vae() -> ImageTokenizer:
    return tv.new_tokenizer(8, seed=0).eval()


def _orthus_stream(tok: Any, vae: ImageTokenizer, **over: Any) -> tuple[Any, Any, Any]:
    return ot.build_stream(tok, vae, dataclasses.replace(O_TINY, **over))


def _nextstep_stream(tok: Any, vae: ImageTokenizer, **over: Any) -> tuple[Any, Any, Any]:
    return ns.build_stream(tok, vae, dataclasses.replace(N_TINY, **over))


def _check_batch(b: data.ImageBatch, placeholder: int, boi: int, vocab: int) -> None:
    bsz, t = b.ids.shape
    assert b.valid.shape == b.slot_mask.shape == b.lm_targets.shape == (bsz, t)
    assert int(b.slot_mask.sum()) == b.feats.shape[0] and b.feats.shape[1] == 64
    assert (b.ids[b.slot_mask] == placeholder).all() and not (b.ids[~b.slot_mask] == placeholder).any()
    assert not (b.slot_mask & ~b.valid).any()
    assert b.target_feats.shape == (b.target_pos.numel(), 64)
    flat = b.slot_mask.flatten()
    assert flat[b.target_pos].all()
    # Each generated image starts right after a BOI: its first slot's predecessor is BOI.
    before = b.ids.flatten()[b.target_pos - 1]
    assert ((before == boi) | (before == placeholder)).all() and (before == boi).any()
    lm = b.lm_targets[b.lm_targets != -100]
    assert ((lm >= 0) & (lm < vocab)).all()
    assert (b.lm_targets[b.slot_mask] == -100).all()


def test_orthus_batches(tok: Any, vae: ImageTokenizer) -> None:
    cfg, _, stream = _orthus_stream(tok, vae, drop_text=0.0, drop_all=0.0)
    b = stream.next()
    _check_batch(b, cfg.image_token_id, cfg.boi_token_id, cfg.vocab_size)
    # Every row starts with BOS; VQA rows end their answer with EOS, predicted from the token before it.
    assert (b.ids[:, 0] == cfg.bos_token_id).all()
    assert (b.lm_targets == cfg.eos_token_id).sum() >= 1
    assert (b.ids == cfg.sep_token_id).sum(1).ge(1).all()


def test_nextstep_batches(tok: Any, vae: ImageTokenizer) -> None:
    cfg, _, stream = _nextstep_stream(tok, vae, drop_text=0.0, drop_all=0.0)
    b = stream.next()
    _check_batch(b, cfg.image_placeholder_id, cfg.boi, cfg.vocab_size)
    assert ((b.ids == cfg.image_area_id).sum(1) >= 1).all()
    assert b.target_pos.numel() == ot.NUM_PATCHES * b.ids.shape[0]  # every NextStep row generates one 3x3 image


def _grads_ok(model: torch.nn.Module, loss: torch.Tensor, prefixes: tuple[str, ...]) -> None:
    assert torch.isfinite(loss)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for pre in prefixes:
        hit = [g for n, g in grads.items() if n.startswith(pre) and g is not None]
        assert hit and any(g.abs().sum() > 0 for g in hit), f"no gradient on {pre}"


def test_orthus_step_gradients(tok: Any, vae: ImageTokenizer) -> None:
    cfg, bank, stream = _orthus_stream(tok, vae)
    model = ot.new_model(cfg, bank)
    loss = ot.orthus_loss(model, stream.next(), torch.Generator().manual_seed(0))
    _grads_ok(model, loss, ("head.", "backbone.layers.", "backbone.embed.", "lm_head."))


def test_nextstep_step_gradients(tok: Any, vae: ImageTokenizer) -> None:
    cfg, _, stream = _nextstep_stream(tok, vae)
    model = ns.new_model(cfg)
    loss = ns.nextstep_loss(model, stream.next(), torch.Generator().manual_seed(0))
    _grads_ok(model, loss, ("image_head.", "image_in_projector.", "image_out_projector.", "backbone.layers.",
                            "backbone.lm_head."))


def _check_own_samples(model: torch.nn.Module, own: Any, b: data.ImageBatch) -> torch.Tensor:
    """Scheduled sampling feeds back the model's own samples in place of target tokens, never of sources."""
    is_target = torch.zeros(b.slot_mask.numel(), dtype=torch.bool)
    is_target[b.target_pos] = True
    rows = is_target[b.slot_mask.flatten()]
    assert rows.any() and (~rows).any()  # edits: source and target images in every row
    g = torch.Generator().manual_seed(0)
    assert torch.equal(own(model, b, 0.0, 2, g), b.feats)
    out = own(model, b, 1.0, 2, g)
    assert torch.equal(out[~rows], b.feats[~rows])
    assert ((out[rows] - b.feats[rows]).abs().amax(-1) > 1e-3).all()
    half = own(model, b, 0.5, 2, g)
    share = float(((half[rows] - b.feats[rows]).abs().amax(-1) > 1e-3).float().mean())
    assert 0.2 < share < 0.8
    assert model.training  # the sampling pass leaves the mode alone (NextStep has no mode-dependent layers)
    return out[rows]


def test_own_samples_replace_only_generated_tokens(tok: Any, vae: ImageTokenizer) -> None:
    from models.nextstep.vae import token_layer_norm

    cfg, _, stream = _nextstep_stream(tok, vae, mix=(0.0, 1.0))
    b = stream.next()
    model = ns.new_model(cfg)
    fed = _check_own_samples(model, ns.own_samples, b)
    assert torch.allclose(fed, token_layer_norm(fed), atol=1e-5)  # LayerNormed, as generation feeds them back
    g = torch.Generator().manual_seed(0)
    _grads_ok(model, ns.nextstep_loss(model, b, g, self_rate=0.5, self_steps=2), ("backbone", "image_head"))


def test_vae_step_gradients() -> None:
    t = tv.new_tokenizer(8)
    batch = tv.RenderStream(8, 4, seed=0).next()
    _grads_ok(t, tv.vae_loss(t, batch, torch.Generator().manual_seed(0)), ("vae.encoder.", "vae.decoder."))


def _overfit(model: torch.nn.Module, loss_fn: Any, batch: Any, steps: int = 30, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        # Same t and noise every step: the objective is then a fixed function and must go down.
        loss = loss_fn(model, batch, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_overfit_one_batch(tok: Any, vae: ImageTokenizer) -> None:
    cfg, bank, stream = _orthus_stream(tok, vae)
    lo = _overfit(ot.new_model(cfg, bank), ot.orthus_loss, stream.next())
    cfg_n, _, stream_n = _nextstep_stream(tok, vae)
    ln = _overfit(ns.new_model(cfg_n), ns.nextstep_loss, stream_n.next())
    t = tv.new_tokenizer(8)
    lv = _overfit(t, tv.vae_loss, tv.RenderStream(8, 8, seed=0).next())
    for name, losses in (("orthus", lo), ("nextstep", ln), ("vae", lv)):
        assert losses[-1] < 0.6 * losses[0], f"{name} did not overfit: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_checkpoint_round_trip(tok: Any, vae: ImageTokenizer, tmp_path: Any) -> None:
    cfg, bank, stream = _orthus_stream(tok, vae)
    model = ot.new_model(cfg, bank)
    _overfit(model, ot.orthus_loss, stream.next(), steps=3)
    save_orthus(model, tmp_path / "o")
    back = load_orthus(tmp_path / "o")
    b = stream.next()
    with torch.no_grad():
        assert torch.equal(model.eval()(b.ids, [b.feats])[1], back(b.ids, [b.feats])[1])
        n = len(b.target_feats)
        t, c = torch.full((n,), 7), torch.ones(n, cfg.hidden_size)
        assert torch.equal(model.head(b.target_feats, t, c), back.head(b.target_feats, t, c))
    cfg_n, _, stream_n = _nextstep_stream(tok, vae)
    m = ns.new_model(cfg_n)
    _overfit(m, ns.nextstep_loss, stream_n.next(), steps=3)
    save_nextstep(m, tmp_path / "n")
    back_n = load_nextstep(tmp_path / "n")
    assert back_n.config == cfg_n
    with torch.no_grad():
        assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), back_n.state_dict().values(),
                                                     strict=True))
    vae.save_pretrained(tmp_path / "v")
    x = data.render_batch([ex.target or ex.source for ex in stream.examples[:2]])
    assert torch.equal(vae.encode(x), ImageTokenizer.from_pretrained(tmp_path / "v").encode(x))


def test_bench_runs_end_to_end(tok: Any, vae: ImageTokenizer) -> None:
    cfg, bank, _ = _orthus_stream(tok, vae)
    cfg_n, _, _ = _nextstep_stream(tok, vae)
    backends = [bench.orthus_backend(ot.new_model(cfg, bank).eval(), vae, tok, steps=2),
                bench.nextstep_backend(ns.new_model(cfg_n).eval(), vae, tok, steps=2)]
    rows = bench.run(2, backends, "cpu")
    keys = {"backend", "t2i_score", "relative_score", "edit_success", "vqa_accuracy", "s_per_image", "images_per_s_1",
            "images_per_s_8"}
    assert [r.backend for r in rows] == ["orthus", "nextstep"]
    for r in rows:
        d = dataclasses.asdict(r)
        assert set(d) == keys
        assert 0.0 <= d["t2i_score"] <= 1.0 and 0.0 <= d["relative_score"] <= 1.0 and 0.0 <= d["edit_success"] <= 1.0
        assert d["s_per_image"] > 0 and d["images_per_s_1"] > 0 and d["images_per_s_8"] > 0
    assert rows[0].vqa_accuracy is not None and 0.0 <= rows[0].vqa_accuracy <= 1.0
    assert rows[1].vqa_accuracy is None
    from lab.bench.image_context import CONTEXTS, context_probe

    for b in backends:
        assert b.next_token is not None
        assert b.next_token("a red circle", torch.zeros(0, 64), torch.Generator()).shape == (64,)
        assert b.next_token("a red circle", torch.randn(3, 64), torch.Generator()).shape == (64,)
        probe = context_probe(b, 1)
        assert set(probe) == set(CONTEXTS) and all(0.0 <= v <= 1.0 for v in probe.values())


def test_pool_draws_relative_prompts_several_times() -> None:
    """Each draw adds up to t2i/6 relative prompts with a fresh matching scene; one draw is the old pool."""
    from lab.worlds import shapes

    one = data.make_pool(60, 3, {"t2i": 1}, relative_scenes=1)
    three = data.make_pool(60, 3, {"t2i": 1}, relative_scenes=3)
    assert len(data.make_pool(60, 3, {"t2i": 1}, relative_scenes=0)) == 60
    assert len(one) == 70 and len(three) == 90 and three[:70] == one
    draws = [three[60:70], three[70:80], three[80:90]]
    assert draws[0] != draws[1] != draws[2]

    def matches(ex: data.Example) -> bool:  # the prompt holds in the example's scene
        assert ex.target is not None and len(ex.target.shapes) == 2
        return any(rel.text == ex.text and rel.holds(a.cell, b.cell)
                   for a, b in (ex.target.shapes, ex.target.shapes[::-1]) for r in shapes.RELATIONS
                   if (rel := shapes.Relation((a.colour, a.kind), r, (b.colour, b.kind))))

    assert all(ex.task == "t2i" and matches(ex) for d in draws for ex in d)
    with pytest.raises(ValueError, match="relative_scenes"):
        data.make_pool(60, 3, {"t2i": 1}, relative_scenes=-1)


def test_nextstep_relative_phase_pool(tok: Any, vae: ImageTokenizer) -> None:
    """The last phase draws relative prompts `rel_scenes` times and trains on the model's own samples."""
    r = dataclasses.replace(N_TINY, pool=120, rel_mix=(1.0, 0.0), rel_scenes=3)
    model = ns.new_model(ns.make_config(tok, vae, r))
    main, edit, rel = ns.phases(model, tok, vae, r)
    assert (main.name, edit.name, rel.name) == ("nextstep", "nextstep-edit", "nextstep-rel")
    assert (rel.steps, rel.lr, rel.seed) == (r.rel_steps, r.rel_lr, r.rel_seed) and rel.loss is not None
    assert len(rel.stream().examples) == 120 + 3 * 20  # captions + 3 draws of 120 // 6 relative prompts
    assert len(main.stream().examples) == 60 + 10 + 60  # the main pool keeps one draw


def test_layouts_match_inference_prompts(tok: Any, vae: ImageTokenizer) -> None:
    """Training rows must be the prompts the generation code builds, or the models learn the wrong context."""
    import random

    from models.nextstep.generate import GenerationConfig, edit_rows, t2i_rows
    from models.orthus.prompt import build_prompt
    from models.orthus.prompt import edit_rows as orthus_edit_rows

    ex_t2i, ex_edit = data.make_pool(2, 0, {"t2i": 1, "edit": 1})
    cfg, _, _ = _orthus_stream(tok, vae)
    bank = data.FeatureBank(vae, [ex_t2i, ex_edit])
    layout = ot.make_layout(tok, cfg, dataclasses.replace(O_TINY, drop_text=0.0, drop_all=0.0))
    rows = data.collate([layout(ex, bank, random.Random(0)) for ex in (ex_t2i, ex_edit)], 0, cfg.image_token_id)
    want = [[*build_prompt(cfg, tok.encode(ex_t2i.text).ids).ids, cfg.boi_token_id],
            [*orthus_edit_rows(cfg, bank[ex_edit.source], tok.encode(ex_edit.text).ids)[0].ids, cfg.boi_token_id]]
    for i, w in enumerate(want):
        assert rows.ids[i, :len(w)].tolist() == w
    # Condition dropout trains the other two pix2pix rows: [image only] and [empty].
    for row, over in ((1, {"drop_text": 1.0, "drop_all": 0.0}), (2, {"drop_text": 0.0, "drop_all": 1.0})):
        drop = ot.make_layout(tok, cfg, dataclasses.replace(O_TINY, **over))
        got = data.collate([drop(ex_edit, bank, random.Random(0))], 0, cfg.image_token_id).ids[0].tolist()
        w = [*orthus_edit_rows(cfg, bank[ex_edit.source], tok.encode(ex_edit.text).ids)[row].ids, cfg.boi_token_id]
        assert got[:len(w)] == w
    cfg_n, _, _ = _nextstep_stream(tok, vae)
    layout_n = ns.make_layout(tok, cfg_n, dataclasses.replace(N_TINY, drop_text=0.0, drop_all=0.0))
    rows_n = data.collate([layout_n(ex, bank, random.Random(0)) for ex in (ex_t2i, ex_edit)], 0,
                          cfg_n.image_placeholder_id)
    model = ns.new_model(cfg_n)
    gen = GenerationConfig(cfg_scale=1.0, negative_prompt="")

    def enc(s: str) -> list[int]:
        return tok.encode(s).ids

    want_n = [t2i_rows(model, enc, [ex_t2i.text], ns.GRID, gen)[0],
              edit_rows(model, enc, [ex_edit.text], ns.GRID, ns.GRID, gen)[0]]
    for i, w in enumerate(want_n):
        assert rows_n.ids[i, :len(w)].tolist() == w


def test_context_noise_touches_only_generated_inputs(tok: Any, vae: ImageTokenizer) -> None:
    """Noise goes on the generated images' input features, never on sources, and the loss still trains."""
    cfg, bank, stream = _orthus_stream(tok, vae, mix=(0.0, 1.0, 0.0))
    b = stream.next()
    rows = data._target_rows(b)
    assert rows.any() and (~rows).any()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(data.with_context_noise(b, b.feats, 0.0, g), b.feats)
    out = data.with_context_noise(b, b.feats, 0.5, g)
    assert torch.equal(out[~rows], b.feats[~rows])
    assert 0.4 < float((out[rows] - b.feats[rows]).std()) < 0.6
    model = ot.new_model(cfg, bank)
    clean = ot.orthus_loss(model, b, torch.Generator().manual_seed(1))
    noisy = ot.orthus_loss(model, b, torch.Generator().manual_seed(1), context_noise=0.5)
    assert not torch.equal(clean, noisy)  # the noise reaches the forward pass
    _grads_ok(model, noisy, ("head.", "backbone.layers."))
    with pytest.raises(ValueError, match="context_noise"):
        ot.OrthusRecipe(context_noise=-0.1)


def test_nextstep_context_noise_goes_on_its_own_samples_too(tok: Any, vae: ImageTokenizer) -> None:
    """NextStep's noise lands on the generated inputs after scheduled sampling has put its samples there."""
    cfg, _, stream = _nextstep_stream(tok, vae, mix=(0.0, 1.0))
    b = stream.next()
    model = ns.new_model(cfg)
    fed: list[torch.Tensor] = []  # the image features of every forward pass
    hook = model.register_forward_pre_hook(lambda _m, args: fed.append(args[1]))
    try:
        ns.nextstep_loss(model, b, torch.Generator().manual_seed(3), self_rate=1.0, self_steps=2)
        noisy = ns.nextstep_loss(model, b, torch.Generator().manual_seed(3), self_rate=1.0, self_steps=2,
                                 context_noise=0.5)
    finally:
        hook.remove()
    sampling, plain, _, noised = fed  # each loss: the own-samples pass, then the training pass
    rows = data._target_rows(b)
    assert torch.equal(sampling, b.feats)  # samples are drawn teacher-forced on the clean tokens
    assert not torch.equal(plain[rows], b.feats[rows])  # the own samples replaced the targets' inputs
    assert torch.equal(noised[~rows], b.feats[~rows])  # sources stay clean
    assert 0.4 < float((noised[rows] - plain[rows]).std()) < 0.6  # the same samples, plus the noise
    _grads_ok(model, noisy, ("backbone.layers.", "image_head."))
    with pytest.raises(ValueError, match="context_noise"):
        ns.NextStepRecipe(context_noise=-0.1)


def test_cli_defaults_are_the_recipes() -> None:
    """The documented command (no flags) must train each model with its recipe's step count."""
    args = build_parser().parse_args([])
    o, n = ot.OrthusRecipe(), ns.NextStepRecipe()
    assert (args.vae_steps, args.orthus_steps, args.orthus_late_steps, args.orthus_wide_steps, args.orthus_edit_steps,
            args.nextstep_steps, args.nextstep_edit_steps, args.nextstep_rel_steps) == (
        tv.VAERecipe().steps, o.steps, o.late_steps, o.wide_steps, o.edit_steps, n.steps, n.edit_steps, n.rel_steps)


def test_the_documented_command_trains_all_three_side_by_side(tmp_path: Any) -> None:
    """`python -m lab.training.images` end to end at 2 steps: the VAE, then Orthus and NextStep in
    two child processes; every directory loads on its own (model, tokenizer, vae/)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lab.training.images", "--out", str(tmp_path), "--steps", "2",
                          "--pool", "12", "--log-every", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    log = out.stdout + out.stderr
    assert "[orthus] step 2/2" in log and "[orthus-late] step 2/2" in log and "[orthus-wide] step 2/2" in log
    assert "[orthus-edit] step 2/2" in log
    assert "[nextstep] step 2/2" in log and "[nextstep-edit] step 2/2" in log and "[nextstep-rel] step 2/2" in log
    assert all(f"{name}: " in out.stdout for name in ("vae", "orthus", "nextstep"))
    load_orthus(tmp_path / "shapes-orthus")
    load_nextstep(tmp_path / "shapes-nextstep")
    for name in ("shapes-orthus", "shapes-nextstep"):
        ImageTokenizer.from_pretrained(tmp_path / name / "vae")
        shipped = (tmp_path / name / "tokenizer.json").read_bytes()
        assert shipped == (tmp_path / "shapes-vae" / "tokenizer.json").read_bytes()
