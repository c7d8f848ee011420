"""Serve one worker family with KServe's ModelServer (Open Inference Protocol v2, REST and gRPC):

    python -m services.workers.kserve --family text [--config services/workers/serve_config.yaml]
        [--app NAME] [--args '{"model": {"device": "cuda"}}'] [--http_port 8080] [--grpc_port 8081]

The model's config is the family's app in the same Serve config file the Ray Serve workers run
(`args`, validated the same way; `--args` merges JSON overrides into them, as the Helm chart's per-app
args do), and its concurrency is that app's `max_ongoing_requests`. KServe's own flags (`--http_port`,
`--grpc_port`, `--workers`, ...) pass through to kserve.ModelServer, which reads them itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from services.workers import serve_config
from services.workers.config import ConfigError
from services.workers.kserve.tensors import Limits

FAMILIES = ("text", "image", "understanding")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m services.workers.kserve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", required=True, choices=FAMILIES)
    ap.add_argument("--config", default=str(serve_config.DEFAULT_PATH), help="the Serve config file")
    ap.add_argument("--app", default="", help="the app in it (default: the one of --family)")
    ap.add_argument("--args", default="{}", help="JSON merged into the app's args")
    d = Limits()
    ap.add_argument("--max-batch", type=int, default=d.max_batch, help="largest batch (first dimension)")
    ap.add_argument("--max-text-chars", type=int, default=d.max_text_chars)
    ap.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes)
    a, _kserve_flags = ap.parse_known_args(argv)  # the rest are kserve.ModelServer's
    return a


def app_of(data: dict[str, Any], family: str, app: str) -> dict[str, Any]:
    """The Serve config's app entry for the family (or the one named)."""
    for entry in data.get("applications", []):
        fam = serve_config.family_of(entry)
        if (entry.get("name") == app) if app else (fam is not None and fam.name == family):
            if fam is None or fam.name != family:
                raise ConfigError(f"applications[{entry.get('name')}] is not a {family} worker app")
            return entry
    raise ConfigError(f"no {family} worker app {app + ' ' if app else ''}in the Serve config")


def build(a: argparse.Namespace) -> Any:
    from services.workers.kserve.model import FamilyModel

    data = serve_config.read(a.config)
    entry = app_of(data, a.family, a.app)
    overrides = json.loads(a.args)
    if not isinstance(overrides, dict):
        raise ConfigError("--args must be a JSON object")
    family = serve_config.family_of(entry)
    assert family is not None  # app_of checked it
    args = serve_config.entry_args(entry, overrides)  # Serve's deployment checks (num_gpus) do not apply
    ongoing = max((d.get("max_ongoing_requests", 5) for d in entry.get("deployments", [])), default=5)
    limits = Limits(max_batch=a.max_batch, max_text_chars=a.max_text_chars, max_image_bytes=a.max_image_bytes)
    return FamilyModel(family, args, limits, max_concurrency=ongoing)


def main(argv: Sequence[str] | None = None) -> None:
    a = parse(sys.argv[1:] if argv is None else argv)
    try:
        model = build(a)
    except (ConfigError, ValueError) as e:
        raise SystemExit(f"config: {e}") from None
    # Imported here: kserve parses sys.argv when it is imported, and builds its FastAPI app then.
    from kserve import ModelServer
    from kserve.model_server import app

    from services.workers.kserve.generate import register

    register(app, {model.name: model})
    model.load()
    ModelServer().start([model])


if __name__ == "__main__":
    main()
