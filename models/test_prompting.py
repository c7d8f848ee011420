"""Prompt formatting from the checkpoint (models.prompting, TextTokenizer.encode_prompt) against transformers'
apply_chat_template, on tokenizer directories shaped like LLaDA-8B-Instruct's and Dream-v0-Instruct-7B's,
written here (no download): a byte-level BPE without merges plus the models' special tokens.

The chat templates are the real checkpoints' as best known here, not copied from the downloaded files:
- LLaDA-8B-Instruct: the Llama-3 template (LLaDA's GUIDELINES.md shows its turns), bos_token <|startoftext|>
  written by the template on the first message. The exact string is the widely used Llama-3 one.
- Dream-v0-Instruct-7B: the Qwen2-style template with the default system message "You are a helpful
  assistant." (Dream's README shows that system turn); bos_token <|beginoftext|> [inferred], not in the template.
Whatever the exact strings, the tests compare this renderer with transformers' on the same template, and the
feature template below exercises the Jinja machinery (sandbox, namespace, tojson, loop controls, whitespace
control, raise_exception) that real templates use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from models.engine import TextEngine, TextRequest
from models.prompting import PromptFormat, render_chat
from models.tokenizer import TextTokenizer

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
STUDENT = CHECKPOINTS / "arith-d2f-lora"

LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
DREAM_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Not a real checkpoint's: the Jinja features real templates (Qwen2.5's, Llama-3.1's) lean on.
FEATURE_TEMPLATE = """{%- set ns = namespace(n=0) -%}
{{- bos_token -}}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
    {% if message['content'] == 'skip me' %}{% continue %}{% endif %}
<|im_start|>{{ message['role'] }} #{{ ns.n }}
{{ message['content'] | tojson }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' -}}
{% endif %}
{{- eos_token if false else '' -}}"""

LLADA = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>", "add_bos_token": True,  # [as best known]
         "chat_template": LLADA_TEMPLATE,
         "specials": ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
                      "<|eot_id|>"]}
DREAM = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<|mask|>", "chat_template": DREAM_TEMPLATE,
         "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"]}
PROMPTS = ["What is 7 * 6?", "  Ünïcode 日本 🙂, with <b>html</b> & \"quotes\"\n  "]


def write_tokenizer_dir(d: Path, spec: dict[str, Any]) -> Path:
    """tokenizer.json (byte-level BPE, no merges, the specials added) and tokenizer_config.json from spec."""
    cfg = dict(spec)
    specials = cfg.pop("specials")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    d.mkdir(parents=True, exist_ok=True)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def reference(d: Path) -> Any:
    from transformers import PreTrainedTokenizerFast  # the reference only: runtime code never imports it
    return PreTrainedTokenizerFast.from_pretrained(str(d))


@pytest.mark.parametrize("name,spec", [("llada", LLADA), ("dream", DREAM)])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_chat_format_matches_transformers_with_bos_once(tmp_path: Path, name: str, spec: dict[str, Any],
                                                        prompt: str) -> None:
    d = write_tokenizer_dir(tmp_path / name, spec)
    ours, ref = TextTokenizer(d), reference(d)
    messages = [{"role": "user", "content": prompt}]
    text = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.prompt_format.render(prompt)[0] == text
    ref_ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    bos = ours.token_id(spec["bos_token"])
    ids = ours.encode_prompt(prompt)
    if name == "llada":  # the template writes BOS: transformers' ids exactly, BOS not doubled
        assert ids == ref_ids and ids[0] == bos
    else:  # Dream's template has no BOS: the D2F recipe's one BOS, then transformers' ids
        assert ref_ids[0] != bos and ids == [bos, *ref_ids]
    assert ids.count(bos) == 1
    assert ours.encode_prompt(prompt, "chat") == ids  # auto = chat when there is a chat template


def test_special_tokens_in_the_rendered_text_are_single_ids(tmp_path: Path) -> None:
    ours = TextTokenizer(write_tokenizer_dir(tmp_path / "llada", LLADA))
    ids = ours.encode_prompt("hi")
    specials = {t: ours.token_id(t) for t in ("<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                                              "<|eot_id|>")}
    assert all(i is not None for i in specials.values())
    # BOS, header(user) + "\n\nhi" + eot, header(assistant) + "\n\n": each special one id, text one id a byte.
    want = [specials["<|startoftext|>"], specials["<|start_header_id|>"], *ours.encode("user"),
            specials["<|end_header_id|>"], *ours.encode("\n\nhi"), specials["<|eot_id|>"],
            specials["<|start_header_id|>"], *ours.encode("assistant"), specials["<|end_header_id|>"],
            *ours.encode("\n\n")]
    assert ids == want
    assert ours.encode("<|eot_id|>") == [specials["<|eot_id|>"]]


@pytest.mark.parametrize("spec", [LLADA, DREAM])
def test_raw_mode_is_the_text_alone(tmp_path: Path, spec: dict[str, Any]) -> None:
    ours = TextTokenizer(write_tokenizer_dir(tmp_path / "m", spec))
    assert ours.encode_prompt(PROMPTS[0], "raw") == ours.encode(PROMPTS[0])
    assert ours.token_id(spec["bos_token"]) not in ours.encode_prompt(PROMPTS[0], "raw")


@pytest.mark.parametrize("spec", [LLADA, DREAM])
def test_bos_mode_is_one_bos_then_the_text(tmp_path: Path, spec: dict[str, Any]) -> None:
    """A base model as the D2F eval prompts it (few-shot text, add_bos_token=true)."""
    ours = TextTokenizer(write_tokenizer_dir(tmp_path / "m", spec))
    bos = ours.token_id(spec["bos_token"])
    assert ours.encode_prompt(PROMPTS[0], "bos") == [bos, *ours.encode(PROMPTS[0])]
    assert ours.encode_prompt(spec["bos_token"] + PROMPTS[0], "bos") == [bos, *ours.encode(PROMPTS[0])]  # once
    with pytest.raises(ValueError, match="no bos_token"):
        TextTokenizer(STUDENT).encode_prompt(PROMPTS[0], "bos")


def test_feature_template_matches_transformers(tmp_path: Path) -> None:
    d = write_tokenizer_dir(tmp_path / "f", {**DREAM, "chat_template": FEATURE_TEMPLATE})
    ref = reference(d)
    fmt = PromptFormat.from_dir(d)
    chats = [[{"role": "user", "content": PROMPTS[1]}],
             [{"role": "system", "content": "Be <brief>."}, {"role": "user", "content": "skip me"},
              {"role": "user", "content": "Ünï"}]]
    for messages in chats:
        want = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert render_chat(FEATURE_TEMPLATE, messages, fmt.special_tokens) == want
    assert "\\u00dc" not in render_chat(FEATURE_TEMPLATE, chats[1], fmt.special_tokens)  # tojson keeps non-ASCII
    with pytest.raises(ValueError, match="chat template: unknown role tool"):
        render_chat(FEATURE_TEMPLATE, [{"role": "tool", "content": "x"}], fmt.special_tokens)


def test_sandbox_refuses_unsafe_templates() -> None:
    with pytest.raises(ValueError, match="attribute '__class__' of 'list' object is unsafe"):
        render_chat("{{ messages.__class__.__mro__ }}", [], {})
    for template in ("{% set ns = namespace(_x=1) %}", "{% set ns = namespace(x=1) %}{% set ns._y = 2 %}"):
        with pytest.raises(ValueError, match="cannot set underscore attributes"):
            render_chat(template, [], {})


def test_list_form_chat_template_picks_default(tmp_path: Path) -> None:
    listed = [{"name": "tool_use", "template": "TOOLS {{ messages[0]['content'] }}"},
              {"name": "default", "template": LLADA_TEMPLATE}]
    d = write_tokenizer_dir(tmp_path / "l", {**LLADA, "chat_template": listed})
    ours, ref = TextTokenizer(d), reference(d)
    messages = [{"role": "user", "content": "hi"}]
    assert ours.prompt_format.chat_template == LLADA_TEMPLATE
    assert ours.prompt_format.render("hi")[0] == ref.apply_chat_template(messages, add_generation_prompt=True,
                                                                         tokenize=False)
    with pytest.raises(ValueError, match="no 'default' template"):
        PromptFormat.from_config({"chat_template": listed[:1]})


def test_special_tokens_in_added_token_form_and_chat_template_jinja(tmp_path: Path) -> None:
    fmt = PromptFormat.from_config({"bos_token": {"content": "<s>", "lstrip": False, "special": True},
                                    "eos_token": "</s>", "unk_token": None, "add_bos_token": "yes"})
    assert (fmt.bos_token, fmt.eos_token, fmt.add_bos_token) == ("<s>", "</s>", None)
    assert fmt.special_tokens == {"bos_token": "<s>", "eos_token": "</s>"}
    d = write_tokenizer_dir(tmp_path / "j", LLADA)
    (d / "chat_template.jinja").write_text("[{{ messages[0]['content'] }}]")  # the newer save format wins
    assert PromptFormat.from_dir(d).render("hi") == ("[hi]", True)


def test_bos_outside_chat_follows_add_bos_token(tmp_path: Path) -> None:
    plain = {k: v for k, v in LLADA.items() if k != "chat_template"}
    with_bos = TextTokenizer(write_tokenizer_dir(tmp_path / "a", plain))
    bos = with_bos.token_id("<|startoftext|>")
    assert with_bos.encode_prompt("hi") == [bos, *with_bos.encode("hi")]
    templated = TextTokenizer(write_tokenizer_dir(tmp_path / "b", {**plain, "prompt_template": "Q: {prompt}\nA:"}))
    assert templated.encode_prompt("hi", "template") == [bos, *templated.encode("Q: hi\nA:")]
    no_bos = TextTokenizer(write_tokenizer_dir(tmp_path / "c", {**plain, "add_bos_token": False}))
    assert no_bos.encode_prompt("hi") == no_bos.encode("hi")
    unset = TextTokenizer(write_tokenizer_dir(tmp_path / "d", {k: v for k, v in plain.items()
                                                                 if k != "add_bos_token"}))
    assert unset.encode_prompt("hi") == unset.encode("hi")


def test_a_mode_the_checkpoint_lacks_is_an_error(tmp_path: Path) -> None:
    tiny = TextTokenizer(STUDENT)
    with pytest.raises(ValueError, match="prompt format 'chat': the tokenizer config has no chat_template"):
        tiny.encode_prompt("hi", "chat")
    llada = TextTokenizer(write_tokenizer_dir(tmp_path / "m", LLADA))
    with pytest.raises(ValueError, match="'template': the tokenizer config has no prompt_template"):
        llada.encode_prompt("hi", "template")
    with pytest.raises(ValueError, match="must be one of"):
        llada.encode_prompt("hi", "llama3")
    broken = TextTokenizer(write_tokenizer_dir(tmp_path / "b", {**LLADA, "bos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match=re.escape("bos_token '<|nope|>' is not in the tokenizer's vocabulary")):
        broken.encode_prompt("hi")


# Today's ids of the embedded tiny checkpoints (prompt_template "Question: {prompt}\nAnswer:", no BOS, no chat
# template), pinned: the prompt format must never change what they are sent.
TINY_PROMPT = "Ann has 3 apples. She buys 4 more. How many apples does Ann have now?"
TINY_IDS = [348, 27, 222, 34, 79, 79, 340, 275, 366, 15, 267, 302, 286, 274, 15, 336, 347, 366, 345, 222, 34, 79, 79,
            341, 334, 32, 200, 323, 27]


@pytest.mark.parametrize("name", ["arith-d2f-lora", "arith-dream-teacher", "arith-qwen2-ar"])
def test_tiny_checkpoints_ids_are_pinned(name: str) -> None:
    tok = TextTokenizer(CHECKPOINTS / name)
    assert tok.encode_prompt(TINY_PROMPT) == TINY_IDS
    assert tok.encode_prompt(TINY_PROMPT, "template") == TINY_IDS
    assert tok.encode_prompt(TINY_PROMPT, "raw") == tok.encode(TINY_PROMPT) != TINY_IDS


def test_engine_prompt_format_and_raw_requests() -> None:
    eng = TextEngine(STUDENT, "d2f")
    try:
        assert eng.prepare(TextRequest(TINY_PROMPT)).prompt_ids == TINY_IDS
        raw = eng.prepare(TextRequest(TINY_PROMPT, raw_prompt=True)).prompt_ids
        assert raw == eng.tokenizer.encode(TINY_PROMPT) == eng.encode_prompt(TINY_PROMPT, raw=True)
    finally:
        eng.close()
    legacy = TextEngine(STUDENT, "d2f", template=False)  # the older spelling of prompt_format="raw"
    try:
        assert legacy.prompt_format == "raw" and legacy.encode_prompt(TINY_PROMPT) == raw
    finally:
        legacy.close()
    with pytest.raises(ValueError, match="no chat_template"):
        TextEngine(STUDENT, "d2f", prompt_format="chat")
