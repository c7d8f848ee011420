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
import socket
import sys
from pathlib import Path
from typing import Any

from ray.serve.schema import ServeDeploySchema

from services.gateway.auth import hash_key
from services.gateway.config import GatewayConfig
from services.gateway.server import Gateway
from services.queue.kinds import Service
from services.queue.redis_server import FSYNC_POLICIES, RedisServer, free_port
from services.workers import serve_config
from services.workers.protocol import WORKER_TOKEN_ENV

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
    check_ports(args, apps)
    key = dev_api_key()
    os.environ["TESSERA_API_KEYS"] = with_key(os.environ.get("TESSERA_API_KEYS", ""), f"dev:{hash_key(key)}")
    # The worker API's credential for this run: the replicas (Ray's runtime env), the gateway and its
    # dispatchers (this process) share it; nothing else on the machine has it.
    os.environ.setdefault(WORKER_TOKEN_ENV, secrets.token_urlsafe(24))
    # A free port for Redis, never one this run binds later (the OS could hand out the gateway's 50051).
    fixed = {args.port, args.metrics_port, apps.grpc_options.port, apps.http_options.port}
    redis = RedisServer(port=args.redis_port or free_port(avoid=fixed), data_dir=ROOT / ".tessera" / "redis",
                        fsync=args.redis_fsync).start()
    log.info("redis-server %s on port %d (append-only file in %s, fsync %s)", redis.binary, redis.port, redis.dir,
             redis.fsync)
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
        cfg.metrics_host = "127.0.0.1"
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


def with_key(configured: str, entry: str) -> str:
    """TESSERA_API_KEYS with `entry` added: the dev key joins the user's keys (theirs keep working)."""
    keys = [k.strip() for k in configured.split(",") if k.strip()]
    return ",".join(keys if entry in keys else [*keys, entry])


def check_ports(args: argparse.Namespace, apps: ServeDeploySchema) -> None:
    """Fail before starting anything when a port this run needs is taken (by another `make run`, say):
    Serve's proxy binds its port with SO_REUSEPORT and would share it without a word."""
    wanted = {"gateway (--port)": (args.host, args.port), "metrics (--metrics-port)": ("127.0.0.1", args.metrics_port),
              "worker gRPC proxy (--worker-port)": ("0.0.0.0", apps.grpc_options.port),
              "Serve HTTP proxy (--http-port)": (apps.http_options.host, apps.http_options.port)}
    if args.redis_port:
        wanted["redis (--redis-port)"] = ("127.0.0.1", args.redis_port)
    busy = [f"{what} port {port}" for what, (host, port) in wanted.items() if port and not port_free(host, port)]
    if busy:
        raise SystemExit("cannot start: " + ", ".join(busy) + " already in use (is another `make run` up? stop it, "
                         "or pick other ports: python -m services.stack --help)")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


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
    ap.add_argument("--redis-fsync", choices=FSYNC_POLICIES, default="everysec",
                    help="append-only file fsync policy (always: no acknowledged job lost even on a crash)")
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
