"""Command-line options shared by the `tessera` subcommands, and turning them into SDK arguments."""

from __future__ import annotations

import argparse
import os
import sys

from tessera._common import DEFAULT_ADDRESS, ImageParams, TextParams
from tessera._retry import DEFAULT_RETRY_BUDGET_S

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# What a shell reports for a process killed by SIGPIPE (128 + 13): the reader of our stdout went away.
EXIT_BROKEN_PIPE = 141


class UsageError(Exception):
    """A problem with what the user asked for (e.g. an unreadable input file): exit 2 with its message."""


def connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # Defined on the main parser and again on each subcommand (with suppressed defaults), so the options
    # work both before and after the subcommand without the subcommand's defaults overwriting them.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("connection")
    g.add_argument("--address", default=default(os.environ.get("TESSERA_ADDRESS", DEFAULT_ADDRESS)),
                   help=f"gateway host:port (env TESSERA_ADDRESS; default {DEFAULT_ADDRESS})")
    g.add_argument("--api-key", default=default(os.environ.get("TESSERA_API_KEY")),
                   help="API key (env TESSERA_API_KEY)")
    g.add_argument("--timeout", type=float, default=default(None), help="deadline in seconds for the call")
    g.add_argument("--retry-budget", type=float, default=default(DEFAULT_RETRY_BUDGET_S), metavar="SECONDS",
                   help="how long to keep retrying an unavailable gateway (0 = no retries; "
                        f"default {DEFAULT_RETRY_BUDGET_S:g})")
    g.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")


def generation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    g = parser.add_argument_group("generation (unset = model default)")
    g.add_argument("--model", default="", help="model name")
    g.add_argument("--max-tokens", type=int, default=0, help="maximum new tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
    g.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=None, help="sampling seed")
    g.add_argument("--block-size", type=int, default=0, help="D2F block size in tokens")
    for tau in ("add", "act", "conf"):
        g.add_argument(f"--tau-{tau}", type=float, default=None, help=f"D2F threshold tau_{tau} in [0, 1]")
    g.add_argument("--raw", action="store_true", dest="raw_prompt",
                   help="send the prompt exactly as written: no chat template, no BOS (you formatted it)")


def image_options(parser: argparse.ArgumentParser, edit: bool) -> None:
    g = parser.add_argument_group("image (unset = model default)")
    g.add_argument("--model", default="", help="model name")
    g.add_argument("--size", type=int, default=0, help="output width and height in pixels (0 = native)")
    g.add_argument("--width", type=int, default=0, help="output width (overrides --size)")
    g.add_argument("--height", type=int, default=0, help="output height (overrides --size)")
    g.add_argument("--steps", type=int, default=0, help="denoising steps per patch")
    g.add_argument("--guidance-scale", type=float, default=0.0, help="text guidance scale")
    if edit:
        g.add_argument("--image-guidance-scale", type=float, default=0.0, help="image guidance scale")
    g.add_argument("--seed", type=int, default=None, help="noise seed")


def understand_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="the image file (PNG or JPEG)")
    parser.add_argument("question")
    parser.add_argument("--model", default="", help="model name")
    parser.add_argument("--max-tokens", type=int, default=0, help="maximum answer tokens")


def text_params(args: argparse.Namespace) -> TextParams:
    return TextParams(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                      top_p=args.top_p, seed=args.seed, block_size=args.block_size, tau_add=args.tau_add,
                      tau_act=args.tau_act, tau_conf=args.tau_conf, raw_prompt=args.raw_prompt)


def image_params(args: argparse.Namespace) -> ImageParams:
    params = ImageParams(model=args.model, width=args.width or args.size, height=args.height or args.size,
                         steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed)
    if getattr(args, "image_guidance_scale", 0.0):
        params["image_guidance_scale"] = args.image_guidance_scale
    return params


def prompt(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.prompt == "-" else args.prompt


def read_image(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
