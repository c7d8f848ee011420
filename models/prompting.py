"""A prompt as the checkpoint's own tokenizer config formats it: its chat template, its BOS, or the tiny
models' `prompt_template`.

Modes (`PromptMode`):
- "chat": the `chat_template` of tokenizer_config.json (or of chat_template.jinja beside it) applied to
  `[{"role": "user", "content": prompt}]` with `add_generation_prompt=True`, rendered as transformers'
  `apply_chat_template` renders it (same Jinja sandbox, options, helpers and variables; see `_environment`).
- "template": the tiny embedded models' `prompt_template` (`"Question: {prompt}\\nAnswer:"`), `str.format`ted.
- "raw": the prompt as is: no template, no BOS.
- "bos": the prompt as is after one BOS: how the D2F evaluation prompts base models (Dream-v0-Base-7B:
  few-shot text, `add_bos_token=true`), whatever the tokenizer config's add_bos_token says.
- "auto" (the default): "chat" when the checkpoint has a chat template, else "template" when it has a
  prompt_template, else the prompt as is (with BOS only where add_bos_token says so).

BOS, decided to match the original D2F recipe rather than transformers' defaults:
- transformers' `apply_chat_template(tokenize=True)` encodes the rendered text with
  `add_special_tokens=False`: a BOS appears only where the template writes `bos_token` (LLaDA-8B-Instruct's
  Llama-3-style template does, on the first message; Dream's Qwen2.5-style one does not).
- The D2F evaluation (eval scripts with `add_bos_token=true`, the engine examples prefixing
  `tokenizer.bos_token`) puts exactly one BOS before the chat-formatted prompt, for LLaDA and Dream alike,
  whatever the tokenizer config's own add_bos_token says.
- So in "chat" mode the prompt starts with BOS once: prepended when the rendered template does not already
  begin with it (Dream), not doubled when it does (LLaDA: the ids equal transformers' exactly).
- In "template" mode and in "auto" without any template, BOS is prepended only when tokenizer_config.json
  says `add_bos_token: true` (the tiny models have no bos_token: their ids are unchanged). "raw" never adds it.

Special tokens inside the rendered text (`<|eot_id|>`, `<|im_start|>`) are the tokenizer's added tokens:
the tokenizers library matches them as single ids even with add_special_tokens=False, as transformers does
(a user prompt that spells one out gets it too, as with transformers' default sanitize_control_tokens=False).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

PromptMode = Literal["auto", "chat", "template", "raw", "bos"]
PROMPT_MODES: tuple[str, ...] = get_args(PromptMode)
# The named special tokens transformers passes to every chat template (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def token_text(value: Any) -> str | None:
    """A special token as tokenizer configs write it: a string, or the AddedToken form {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _pick_chat_template(value: Any) -> str | None:
    """tokenizer_config.json's chat_template: a string, or a list of {"name", "template"} of which the one
    named "default" is what apply_chat_template uses (without tools)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        if "default" not in named:
            raise ValueError(f"chat_template lists {sorted(map(str, named))} but no 'default' template")
        return _pick_chat_template(named["default"])
    raise ValueError(f"chat_template must be a string or a list of named templates, got {type(value).__name__}")


def load_tokenizer_config(model_dir: str | Path) -> dict[str, Any]:
    """tokenizer_config.json ({} when absent), with chat_template.jinja's template where that file exists
    (transformers' newer save format; it takes precedence over the config's, as in transformers)."""
    d = Path(model_dir)
    path = d / "tokenizer_config.json"
    cfg: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    jinja_file = d / "chat_template.jinja"
    if jinja_file.exists():
        cfg["chat_template"] = jinja_file.read_text()
    return cfg


@dataclass(slots=True)
class PromptFormat:
    chat_template: str | None = None
    prompt_template: str | None = None  # the tiny models' format, "...{prompt}..."
    add_bos_token: bool | None = None  # None: the config does not say
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ... as templates see them

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> PromptFormat:
        add_bos = cfg.get("add_bos_token")
        specials = {name: text for name in SPECIAL_TOKEN_NAMES if (text := token_text(cfg.get(name))) is not None}
        return cls(chat_template=_pick_chat_template(cfg.get("chat_template")),
                   prompt_template=cfg.get("prompt_template"),
                   add_bos_token=add_bos if isinstance(add_bos, bool) else None, special_tokens=specials)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> PromptFormat:
        return cls.from_config(load_tokenizer_config(model_dir))

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    def resolve(self, mode: str) -> str:
        """The mode that applies: "auto" resolved, and an explicit one checked against the checkpoint."""
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt format must be one of {PROMPT_MODES}, got {mode!r}")
        if mode == "auto":
            return "chat" if self.chat_template else "template" if self.prompt_template else "none"
        if mode == "chat" and not self.chat_template:
            raise ValueError("prompt format 'chat': the tokenizer config has no chat_template")
        if mode == "template" and not self.prompt_template:
            raise ValueError("prompt format 'template': the tokenizer config has no prompt_template")
        if mode == "bos" and not self.bos_token:
            raise ValueError("prompt format 'bos': the tokenizer config has no bos_token")
        return mode

    def render(self, prompt: str, mode: str = "auto") -> tuple[str, bool]:
        """The text to encode (without adding special tokens) and whether a BOS must start its ids
        (once: the caller skips it when the ids already start with BOS)."""
        style = self.resolve(mode)
        if style in ("raw", "bos"):
            return prompt, style == "bos"
        if style == "chat":
            assert self.chat_template is not None
            return render_chat(self.chat_template, [{"role": "user", "content": prompt}],
                               self.special_tokens), self.bos_token is not None
        text = self.prompt_template.format(prompt=prompt) if style == "template" and self.prompt_template else prompt
        return text, bool(self.add_bos_token) and self.bos_token is not None


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' AssistantTracker tag): renders its body; the
    assistant-token mask it tracks there is not needed to build a prompt."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` refusing underscore attributes, as transformers' (CPython internals stay out of reach)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # (Jinja's own signature trick: a `self` key stays allowed)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Like transformers': Jinja's own tojson escapes HTML characters, which templates do not expect.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    """transformers' chat template environment (utils/chat_template_utils.py, _compile_jinja_template):
    templates from a checkpoint are untrusted code, hence the immutable sandbox."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=16)
def _compile(chat_template: str) -> jinja2.Template:
    return _environment().from_string(chat_template)


def render_chat(chat_template: str, messages: list[dict[str, str]], special_tokens: dict[str, str],
                add_generation_prompt: bool = True) -> str:
    """The template rendered with the variables apply_chat_template passes (tools and documents None,
    the named special tokens that are set); a template error (raise_exception included) is a ValueError."""
    try:
        return _compile(chat_template).render(messages=messages, tools=None, documents=None,
                                              add_generation_prompt=add_generation_prompt, **special_tokens)
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"chat template: {e}") from e
