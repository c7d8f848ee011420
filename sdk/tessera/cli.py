"""`tessera` command line: stream text, generate and edit images, ask about images, and manage jobs.

Text goes to stdout as it arrives and everything else (summary, progress bars, errors) to stderr, so
`tessera text "..." > out.txt` captures exactly the generation; `tessera image` and `tessera edit`
write a PNG file (-o) and `tessera ask` streams its answer to stdout. Exit codes: 0 ok, 2 invalid
argument (bad flags or rejected request), 1 any other error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tessera._common import DEFAULT_ADDRESS, ImageParams, TextParams
from tessera._version import __version__
from tessera.client import Client, ImageStream, TextStream
from tessera.errors import TesseraError
from tessera.types import ImageProgress, ImageResult, TextResult
from tessera.v1 import jobs_pb2

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_CANCEL_TIMEOUT_S = 2.0


def _connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
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
    g.add_argument("--tls", action="store_true", default=default(False), help="connect with TLS")


def _generation_options(parser: argparse.ArgumentParser) -> None:
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


def _image_options(parser: argparse.ArgumentParser, edit: bool) -> None:
    parser.add_argument("-o", "--output", required=True, help="where to write the PNG")
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
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public so docs and tests can render --help)."""
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera client: text, images, understanding.")
    parser.add_argument("--version", action="version", version=f"tessera {__version__}")
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True)

    text = sub.add_parser("text", help="stream generated text to stdout")
    _generation_options(text)
    _connection_options(text, suppress=True)

    image = sub.add_parser("image", help="generate an image from a prompt into a PNG file")
    image.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    _image_options(image, edit=False)
    _connection_options(image, suppress=True)

    edit = sub.add_parser("edit", help="edit an image (PNG or JPEG) following an instruction")
    edit.add_argument("image", help="the input image file")
    edit.add_argument("instruction", help="what to change")
    _image_options(edit, edit=True)
    _connection_options(edit, suppress=True)

    ask = sub.add_parser("ask", help="ask a question about an image; the answer streams to stdout")
    ask.add_argument("image", help="the image file (PNG or JPEG)")
    ask.add_argument("question")
    ask.add_argument("--model", default="", help="model name")
    ask.add_argument("--max-tokens", type=int, default=0, help="maximum answer tokens")
    _connection_options(ask, suppress=True)

    jobs = sub.add_parser("jobs", help="submit, inspect, watch, cancel and list jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = jobs_sub.add_parser("submit", help="queue a text job and print it")
    _generation_options(submit)
    for name, help_ in (("get", "print a job"), ("watch", "print a job's events as JSON lines"),
                        ("cancel", "cancel a job and print it")):
        p = jobs_sub.add_parser(name, help=help_)
        p.add_argument("job_id")
        if name == "watch":
            p.add_argument("--after", default="", metavar="EVENT_ID", help="resume after this event id")
    lst = jobs_sub.add_parser("list", help="list your jobs, newest first")
    lst.add_argument("--page-size", type=int, default=20)
    lst.add_argument("--page-token", default="")
    for p in (jobs, submit, *[jobs_sub.choices[n] for n in ("get", "watch", "cancel", "list")]):
        _connection_options(p, suppress=True)
    return parser


def _params(args: argparse.Namespace) -> TextParams:
    return TextParams(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                      top_p=args.top_p, seed=args.seed, block_size=args.block_size, tau_add=args.tau_add,
                      tau_act=args.tau_act, tau_conf=args.tau_conf)


def _prompt(args: argparse.Namespace) -> str:
    return sys.stdin.read() if args.prompt == "-" else args.prompt


def _print_json(msg: Message) -> None:
    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True)), flush=True)


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


def _cmd_text(client: Client, args: argparse.Namespace) -> int:
    stream = client.stream_text(_prompt(args), timeout=args.timeout, **_params(args))
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


def _image_params(args: argparse.Namespace) -> ImageParams:
    params = ImageParams(model=args.model, width=args.width or args.size, height=args.height or args.size,
                         steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed)
    if getattr(args, "image_guidance_scale", 0.0):
        params["image_guidance_scale"] = args.image_guidance_scale
    return params


def _cmd_image(client: Client, args: argparse.Namespace) -> int:
    if args.command == "image":
        stream = client.stream_image(_prompt(args), timeout=args.timeout, **_image_params(args))
    else:
        try:
            with open(args.image, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"tessera: error: cannot read {args.image}: {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
        stream = client.stream_edit(data, args.instruction, timeout=args.timeout, **_image_params(args))
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


def _cmd_ask(client: Client, args: argparse.Namespace) -> int:
    try:
        with open(args.image, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"tessera: error: cannot read {args.image}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    stream = client.understand(data, args.question, model=args.model, max_tokens=args.max_tokens,
                               timeout=args.timeout)
    try:
        for chunk in stream:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return _interrupted(client, stream)
    sys.stdout.write("\n")
    if stream.result is not None:
        print(summary_line(stream.result), file=sys.stderr)
    return 0


def _cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    cmd = args.jobs_command
    if cmd == "submit":
        _print_json(client.submit_text_job(_prompt(args), timeout=args.timeout, **_params(args)))
    elif cmd == "get":
        _print_json(client.get_job(args.job_id, timeout=args.timeout))
    elif cmd == "cancel":
        _print_json(client.cancel_job(args.job_id, timeout=args.timeout))
    elif cmd == "watch":
        with client.watch_job(args.job_id, args.after, timeout=args.timeout) as events:
            try:
                for event in events:
                    _print_json(event)
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED  # Only stops watching: the job itself keeps running.
    else:
        jobs, next_token = client.list_jobs(args.page_size, args.page_token, timeout=args.timeout)
        for job in jobs:
            state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
            created = job.create_time.ToJsonString() if job.HasField("create_time") else "-"
            print(f"{job.id}\t{state}\t{job.progress:.0%}\t{created}")
        if next_token:
            print(f"more: --page-token {next_token}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (console script and `python -m tessera` entry point)."""
    args = build_parser().parse_args(argv)
    try:
        with Client(args.address, api_key=args.api_key, tls=args.tls) as client:
            commands = {"text": _cmd_text, "image": _cmd_image, "edit": _cmd_image, "ask": _cmd_ask}
            return commands.get(args.command, _cmd_jobs)(client, args)
    except TesseraError as e:
        hint = f" (gateway {args.address})" if e.code == grpc.StatusCode.UNAVAILABLE else ""
        print(f"tessera: error: {e}{hint}", file=sys.stderr)
        return EXIT_USAGE if e.code == grpc.StatusCode.INVALID_ARGUMENT else EXIT_ERROR
    except ValueError as e:  # e.g. a non-positive --timeout
        print(f"tessera: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
