"""`tessera jobs ...` and `tessera models`: machine-readable output for scripts.

Every command prints JSON on stdout (protobuf field names; `jobs watch` prints JSON Lines, one event
per line); the listing commands take --tsv for tab-separated rows without a header instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from tessera import _cli_args as opts
from tessera.client import Client
from tessera.errors import TesseraError, from_status
from tessera.types import ModelInfo
from tessera.v1 import jobs_pb2

JOB_COLUMNS = ("id", "state", "progress", "create_time", "kind")
MODEL_COLUMNS = tuple(f.name for f in dataclasses.fields(ModelInfo))
_UNSUCCESSFUL = (jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


def _tsv_option(parser: argparse.ArgumentParser, columns: tuple[str, ...]) -> None:
    parser.add_argument("--tsv", action="store_true",
                        help=f"tab-separated rows instead of JSON; columns: {' '.join(columns)}")


def add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="list the models the gateway serves, with their limits (JSON)")
    _tsv_option(models, MODEL_COLUMNS)
    opts.connection_options(models, suppress=True)


def add_jobs_parser(sub: Any) -> None:
    jobs = sub.add_parser("jobs", help="submit, inspect, watch, cancel and list jobs (JSON)")
    opts.connection_options(jobs, suppress=True)
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    _add_submit_parser(jobs_sub)
    for name, help_ in (("get", "print a job"), ("cancel", "cancel a job and print it"),
                        ("watch", "print a job's events as JSON lines; exit 0 only if it succeeds")):
        p = jobs_sub.add_parser(name, help=help_)
        p.add_argument("job_id")
        if name == "watch":
            p.add_argument("--after", default="", metavar="EVENT_ID", help="resume after this event id")
        else:
            _tsv_option(p, JOB_COLUMNS)
        opts.connection_options(p, suppress=True)
    lst = jobs_sub.add_parser("list", help="list your jobs, newest first")
    lst.add_argument("--page-size", type=int, default=20)
    lst.add_argument("--page-token", default="")
    _tsv_option(lst, JOB_COLUMNS)
    opts.connection_options(lst, suppress=True)


def _add_submit_parser(jobs_sub: Any) -> None:
    """`jobs submit KIND ...`: each kind takes the arguments of its interactive command."""
    submit = jobs_sub.add_parser("submit", help="queue a job of any kind and print it")
    opts.connection_options(submit, suppress=True)
    kinds = submit.add_subparsers(dest="kind", required=True)
    text = kinds.add_parser("text", help="text generation (as `tessera text`)")
    opts.generation_options(text)
    image = kinds.add_parser("image", help="image generation from a prompt (as `tessera image`)")
    image.add_argument("prompt", help='the prompt ("-" reads it from stdin)')
    opts.image_options(image, edit=False)
    edit = kinds.add_parser("edit", help="edit an image following an instruction (as `tessera edit`)")
    edit.add_argument("image", help="the input image file (PNG or JPEG)")
    edit.add_argument("instruction", help="what to change")
    opts.image_options(edit, edit=True)
    understand = kinds.add_parser("understand", help="a question about an image (as `tessera ask`)")
    opts.understand_options(understand)
    for p in (text, image, edit, understand):
        p.add_argument("--idempotency-key", default=None,
                       help="submitting again with the same key returns the same job (default: a fresh key)")
        _tsv_option(p, JOB_COLUMNS)
        opts.connection_options(p, suppress=True)


def print_json(msg: Message) -> None:
    # Every field, defaults included (state, progress, ...): a script reading `.progress` finds it at 0 too.
    print(json.dumps(MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)),
          flush=True)


def job_row(job: jobs_pb2.Job) -> str:
    """The --tsv row of a job (columns JOB_COLUMNS)."""
    state = jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    created = job.create_time.ToJsonString() if job.HasField("create_time") else "-"
    return "\t".join((job.id, state, f"{job.progress:.0%}", created, job.spec.WhichOneof("kind") or "-"))


def model_row(model: ModelInfo) -> str:
    """The --tsv row of a model (columns MODEL_COLUMNS): lists comma-separated, booleans true/false."""
    def cell(value: object) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        return ",".join(value) if isinstance(value, tuple) else str(value)
    return "\t".join(cell(v) for v in dataclasses.astuple(model))


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.list_models(timeout=args.timeout)
    if args.tsv:
        for m in models:
            print(model_row(m))
    else:  # ModelInfo mirrors the proto field for field, so these are its JSON names too
        print(json.dumps({"models": [dataclasses.asdict(m) for m in models]}))
    return 0


def cmd_jobs(client: Client, args: argparse.Namespace) -> int:
    cmd = args.jobs_command
    if cmd == "watch":
        return _watch(client, args)
    if cmd == "list":
        return _list(client, args)
    if cmd == "submit":
        job = _submit(client, args)
    elif cmd == "get":
        job = client.get_job(args.job_id, timeout=args.timeout)
    else:
        job = client.cancel_job(args.job_id, timeout=args.timeout)
    if args.tsv:
        print(job_row(job))
    else:
        print_json(job)
    return 0


def _submit(client: Client, args: argparse.Namespace) -> jobs_pb2.Job:
    common: dict[str, Any] = {"idempotency_key": args.idempotency_key, "timeout": args.timeout}
    if args.kind == "text":
        return client.submit_text_job(opts.prompt(args), **common, **opts.text_params(args))
    if args.kind == "image":
        return client.submit_image_job(opts.prompt(args), **common, **opts.image_params(args))
    if args.kind == "edit":
        return client.submit_edit_job(opts.read_image(args.image), args.instruction, **common,
                                      **opts.image_params(args))
    return client.submit_understand_job(opts.read_image(args.image), args.question, model=args.model,
                                        max_tokens=args.max_tokens, **common)


def _list(client: Client, args: argparse.Namespace) -> int:
    jobs, next_token = client.list_jobs(args.page_size, args.page_token, timeout=args.timeout)
    if not args.tsv:
        print_json(jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=next_token))
        return 0
    for job in jobs:
        print(job_row(job))
    if next_token:
        print(f"more: --page-token {next_token}", file=sys.stderr)
    return 0


def _watch(client: Client, args: argparse.Namespace) -> int:
    state, error = jobs_pb2.JOB_STATE_UNSPECIFIED, None
    with client.watch_job(args.job_id, args.after, timeout=args.timeout) as events:
        try:
            for event in events:
                print_json(event)
                state, error = _after(event, state, error)
        except KeyboardInterrupt:
            return opts.EXIT_INTERRUPTED  # Only stops watching: the job itself keeps running.
    if state == jobs_pb2.JOB_STATE_SUCCEEDED:
        return 0
    err = from_status(error) if error is not None else None
    verdict = jobs_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower() if state in _UNSUCCESSFUL \
        else "has not ended"
    print(f"tessera: error: job {args.job_id} {verdict}" + (f": {err}" if err else ""), file=sys.stderr)
    return exit_code(err) if err is not None else opts.EXIT_ERROR


def _after(event: jobs_pb2.JobEvent, state: int, error: Any) -> tuple[int, Any]:
    """The job's state and error as far as the events up to `event` tell. (The gateway sends the end
    state first, then the result or error, which ends the stream; resuming after the last event of an
    ended job sends that final event again.)"""
    kind = event.WhichOneof("kind")
    if kind == "result":
        return jobs_pb2.JOB_STATE_SUCCEEDED, None
    if kind == "error":
        return (state if state in _UNSUCCESSFUL else jobs_pb2.JOB_STATE_FAILED), event.error
    if kind == "state":
        return event.state, error
    return state, error


def exit_code(e: TesseraError) -> int:
    """2 for a rejected request (INVALID_ARGUMENT), 1 for any other failure."""
    return opts.EXIT_USAGE if e.code == grpc.StatusCode.INVALID_ARGUMENT else opts.EXIT_ERROR
