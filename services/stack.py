"""The whole stack on one machine (`make run`): Redis, Ray + the text, image and understanding worker
apps of the Serve config file (services/workers/serve_config.yaml) behind one gRPC proxy, and the
gateway with its dispatchers. Prints the address and ready-to-paste commands; Ctrl-C stops
everything it started.

    python -m services.stack [--port 50051] [--worker-port 9000] [--metrics-port 9464]
                             [--serve-config FILE] [--image-checkpoints DIR]

The image workers need the shapes checkpoints (checkpoints/shapes-*, or DIR/shapes-* from
`python -m lab.training.images --out DIR`); without them the stack serves text only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from ray.serve.schema import ServeDeploySchema

from services.gateway.auth import hash_key
from services.gateway.config import GatewayConfig
from services.gateway.server import Gateway
from services.queue.kinds import Service
from services.queue.redis_server import RedisServer
from services.workers import serve_config

ROOT = Path(__file__).resolve().parents[1]
IMAGE_DEMO = "a red circle on the left and a blue square on the right"  # the shapes world's phrasing
EDIT_DEMO = "make the circle green"
ASK_DEMO = "what colour is the square?"
DEMO = ("Mia has 12 shells. She finds 7 more. She gives 3. She buys 5 more. She loses 4. "
        "How many shells does Mia have now?")
log = logging.getLogger("tessera.stack")


def dev_api_key() -> str:
    """A per-checkout development key, kept in .tessera/ so the printed command stays valid."""
    path = ROOT / ".tessera" / "dev-api-key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def worker_apps(args: argparse.Namespace) -> tuple[ServeDeploySchema, bool]:
    """The Serve config's worker apps with this run's ports and --image-checkpoints applied; the image
    and understanding apps are left out when their checkpoints are missing. Returns (config, images)."""
    data = serve_config.read(args.serve_config)
    overrides: dict[str, dict[str, Any]] = {}
    if args.image_checkpoints:
        root = Path(args.image_checkpoints).expanduser().resolve()
        backend = serve_config.app_args(serve_config.validate(data), "image").model.backend  # type: ignore[attr-defined]
        overrides = {"image": {"model": {"model_dir": str(root / f"shapes-{backend}")}},
                     "understanding": {"model": {"model_dir": str(root / "shapes-orthus")}}}
    full = serve_config.configure(data, args=overrides, grpc_port=args.worker_port, http_port=args.http_port)
    dirs = {a.name: serve_config.app_args(full, a.name).model.path for a in full.applications}
    missing = [str(d) for name, d in dirs.items() if name != "text" and not d.exists()]
    if not missing:
        return full, True
    log.warning("image checkpoints not found (%s): serving text only; train them with "
                "`python -m lab.training.images` or pass --image-checkpoints DIR", ", ".join(missing))
    return serve_config.configure(data, only=["text"], grpc_port=args.worker_port, http_port=args.http_port), False


async def run(args: argparse.Namespace) -> None:
    from ray import serve

    from services.workers.deploy import deploy, start_serve

    apps, images = worker_apps(args)  # validated before anything starts
    key = dev_api_key()
    os.environ["TESSERA_API_KEYS"] = f"dev:{hash_key(key)}"
    redis = RedisServer(port=args.redis_port).start()
    log.info("redis-server %s on port %d", redis.binary, redis.port)
    gateway: Gateway | None = None
    try:
        names = [a.name for a in apps.applications]
        log.info("starting Ray and the worker apps %s from %s (first start takes ~30 s)...", names, args.serve_config)
        # Logical CPUs: each replica asks for one and runs one torch thread; three replicas must fit on
        # a 2-core laptop (they mostly wait for requests).
        await asyncio.to_thread(start_serve, apps, num_cpus=max(4, os.cpu_count() or 1))
        await asyncio.to_thread(deploy, apps)
        cfg = GatewayConfig.load(args.gateway_config)
        if images:
            cfg.images.models = [serve_config.app_args(apps, "image").model.name]
            cfg.understanding.models = [serve_config.app_args(apps, "understanding").model.name]
        else:
            cfg.dispatcher.services = [Service.TEXT]
        cfg.host, cfg.port, cfg.metrics_port, cfg.redis_url = args.host, args.port, args.metrics_port, redis.url
        cfg.dispatcher.worker_address = f"127.0.0.1:{apps.grpc_options.port}"
        gateway = Gateway(cfg)
        port = await gateway.start()
        print(banner(args, port, key, redis.url, images, apps.grpc_options.port), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("\nstopping...", flush=True)
    finally:
        if gateway is not None:
            await gateway.stop()
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        redis.stop()


def banner(args: argparse.Namespace, port: int, key: str, redis_url: str, images: bool, worker_port: int) -> str:
    cli = f"{Path(sys.executable).parent / 'tessera'} --address 127.0.0.1:{port} --api-key {key}"
    lines = [f"  {cli} text {shlex.quote(DEMO)}"]
    if images:
        lines += [f"  {cli} image {shlex.quote(IMAGE_DEMO)} --size 256 -o out.png",
                  f"  {cli} edit out.png {shlex.quote(EDIT_DEMO)} --size 256 -o edited.png",
                  f"  {cli} ask out.png {shlex.quote(ASK_DEMO)}"]
    workers = "text, image, understanding" if images else "text (no image checkpoints)"
    return (f"\nTessera is up.\n  gateway  {args.host}:{port} (gRPC, API key required)\n"
            f"  metrics  http://127.0.0.1:{args.metrics_port}/metrics\n  workers  {workers} behind the Ray Serve "
            f"gRPC proxy 127.0.0.1:{worker_port}\n  redis    {redis_url}\n\nTry it in another terminal:\n\n"
            + "\n".join(lines) + "\n\nCtrl-C stops everything.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("TESSERA_GATEWAY_PORT", 50051)))
    ap.add_argument("--worker-port", type=int, default=None, help="default: the Serve config's grpc_options.port")
    ap.add_argument("--http-port", type=int, default=None, help="default: the Serve config's http_options.port")
    ap.add_argument("--metrics-port", type=int, default=9464)
    ap.add_argument("--redis-port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--serve-config", default=str(serve_config.DEFAULT_PATH),
                    help="the worker apps' Serve config (the file `serve run` and a RayService take)")
    ap.add_argument("--gateway-config", default=str(ROOT / "services/gateway/config.yaml"))
    ap.add_argument("--image-checkpoints", default=os.environ.get("TESSERA_IMAGE_CHECKPOINTS", ""),
                    help="directory holding shapes-orthus / shapes-nextstep (env TESSERA_IMAGE_CHECKPOINTS; "
                         "default: the model_dir of each app in the Serve config)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
