"""`tessera` command line: stream text, generate and edit images, ask about images, list models, manage jobs.

Text goes to stdout as it arrives and everything else (summary, progress bars, errors) to stderr, so
`tessera text "..." > out.txt` captures exactly the generation; `tessera image` and `tessera edit`
write a PNG file (-o) and `tessera ask` streams its answer to stdout. `tessera models` and `tessera
jobs ...` print JSON (or --tsv rows). Exit codes: 0 ok, 2 invalid argument (bad flags or rejected
request), 1 any other error (for `jobs watch`: the job did not succeed), 130 interrupted, 141 stdout
closed by its reader (e.g. `| head`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import grpc

from tessera import _cli_args as opts
from tessera._cli_args import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from tessera._cli_jobs import add_jobs_parser, add_models_parser, cmd_jobs, cmd_models, exit_code
from tessera._version import __version__
from tessera.client import Client, ImageStream, TextStream
from tessera.errors import TesseraError
from tessera.types import ImageProgress, ImageResult, TextResult

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_USAGE", "build_parser", "main"]

_CANCEL_TIMEOUT_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can render --help)."""
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera client: text, images, understanding.")
    parser.add_argument("--version", action="version", version=f"tessera {__version__}")
    opts.connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)

    text = sub.add_parser("text", help="stream generated text to stdout")
    opts.generation_options(text)
    _connection(text)

    image = sub.add_parser("image", help="generate an image from a prompt into a PNG file")
    image.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    _output_options(image)
    opts.image_options(image, edit=False)
    _connection(image)

    edit = sub.add_parser("edit", help="edit an image (PNG or JPEG) following an instruction")
    edit.add_argument("image", help="the input image file")
    edit.add_argument("instruction", help="what to change")
    _output_options(edit)
    opts.image_options(edit, edit=True)
    _connection(edit)

    ask = sub.add_parser("ask", help="ask a question about an image; the answer streams to stdout")
    opts.understand_options(ask)
    _connection(ask)

    add_models_parser(sub)
    add_jobs_parser(sub)
    return parser


def _connection(parser: argparse.ArgumentParser) -> None:
    opts.connection_options(parser, suppress=True)


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="where to write the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def summary_line(result: TextResult) -> str:
    """The one-line report printed after streamed text."""
    u = result.usage
    return (f"[{result.finish_reason}] {u.completion_tokens} tokens, {u.tokens_per_forward:.2f} tokens/forward, "
            f"first chunk {u.time_to_first_chunk_s:.2f}s, total {u.total_s:.2f}s, queue {u.queue_s:.2f}s "
            f"(job {result.job_id}, model {result.model})")


def _interrupted(client: Client, stream: TextStream | ImageStream) -> int:
    # A stream is resumable, so its job may outlive the disconnect: cancel it explicitly, or a user's
    # Ctrl-C would leave it burning GPU time for nobody.
    stream.cancel()
    if stream.job_id:
        try:
            client.cancel_job(stream.job_id, timeout=_CANCEL_TIMEOUT_S)
        except TesseraError as e:
            print(f"\ncould not cancel job {stream.job_id}: {e}", file=sys.stderr)
    print(f"\ncancelled (job {stream.job_id or 'unknown'})", file=sys.stderr)
    return EXIT_INTERRUPTED


def _print_text(client: Client, stream: TextStream) -> int:
    try:
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return _interrupted(client, stream)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if stream.result is not None:
        print(summary_line(stream.result), file=sys.stderr)
    return 0


def _cmd_text(client: Client, args: argparse.Namespace) -> int:
    return _print_text(client, client.stream_text(opts.prompt(args), timeout=args.timeout, **opts.text_params(args)))


def _cmd_ask(client: Client, args: argparse.Namespace) -> int:
    stream = client.understand(opts.read_image(args.image), args.question, model=args.model,
                               max_tokens=args.max_tokens, timeout=args.timeout)
    return _print_text(client, stream)


class ProgressBar:
    """`[#####-----]  2/4 patches` redrawn in place on stderr."""

    WIDTH = 30

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.drawn = enabled, False

    def __call__(self, p: ImageProgress) -> None:
        if not self.enabled or not p.patches_total:
            return
        filled = round(self.WIDTH * p.patches_done / p.patches_total)
        sys.stderr.write(f"\r[{'#' * filled}{'-' * (self.WIDTH - filled)}] {p.patches_done}/{p.patches_total} patches")
        sys.stderr.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _cmd_image(client: Client, args: argparse.Namespace) -> int:
    if args.command == "image":
        stream = client.stream_image(opts.prompt(args), timeout=args.timeout, **opts.image_params(args))
    else:
        stream = client.stream_edit(opts.read_image(args.image), args.instruction, timeout=args.timeout,
                                    **opts.image_params(args))
    bar = ProgressBar(not args.no_progress)
    try:
        result = stream.wait(bar)
    except KeyboardInterrupt:
        bar.close()
        return _interrupted(client, stream)
    bar.close()
    result.save(args.output)
    print(image_summary(result, args.output), file=sys.stderr)
    return 0


def image_summary(result: ImageResult, path: str) -> str:
    u = result.usage
    return (f"wrote {path} ({result.width}x{result.height} PNG, {len(result.png)} bytes): {u.patches} patches x "
            f"{u.steps} steps, batch of {u.batch_size}, model {u.generate_s:.2f}s, total {u.total_s:.2f}s, "
            f"queue {u.queue_s:.2f}s (job {result.job_id}, model {result.model}, seed {result.seed})")


_COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "text": _cmd_text, "image": _cmd_image, "edit": _cmd_image, "ask": _cmd_ask, "models": cmd_models,
    "jobs": cmd_jobs,
}


def _run(args: argparse.Namespace) -> int:
    try:
        with Client(args.address, api_key=args.api_key, tls=args.tls, retry_budget_s=args.retry_budget) as client:
            return _COMMANDS[args.command](client, args)
    except TesseraError as e:
        hint = f" (gateway {args.address})" if e.code == grpc.StatusCode.UNAVAILABLE else ""
        print(f"tessera: error: {e}{hint}", file=sys.stderr)
        return exit_code(e)
    except (UsageError, ValueError) as e:  # an unreadable file, a non-positive --timeout or --retry-budget
        print(f"tessera: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stdout_gone() -> int:
    # The Python docs' recipe for SIGPIPE: point stdout at devnull, so the interpreter's last flush of
    # what is still buffered has nowhere to fail ("Exception ignored ... BrokenPipeError").
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (console script and `python -m tessera` entry point)."""
    if sys.stdout is None:  # started with stdout closed (`tessera ... >&-`): output goes nowhere, quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    try:
        try:
            return _run(build_parser().parse_args(argv))
        finally:
            # Inside the try: a reader that went away shows up here, even after --help's SystemExit.
            sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_gone()


if __name__ == "__main__":
    raise SystemExit(main())
