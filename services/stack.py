"""The whole stack on one machine (`make run`): Redis, Ray + the Serve text, image and understanding
workers behind one gRPC proxy, and the gateway with its dispatchers. Prints the address and
ready-to-paste commands; Ctrl-C stops everything it started.

    python -m services.stack [--port 50051] [--worker-port 9000] [--metrics-port 9464]
                             [--image-checkpoints DIR] [--image-config YAML] [--understanding-config YAML]

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

from services.common.redis_server import RedisServer
from services.gateway.auth import hash_key
from services.gateway.config import GatewayConfig
from services.gateway.server import Gateway
from services.workers.image.config import ImageWorkerConfig
from services.workers.understanding.config import UnderstandingWorkerConfig

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


def image_configs(args: argparse.Namespace) -> tuple[ImageWorkerConfig, UnderstandingWorkerConfig]:
    """The image and understanding worker configs, with --image-checkpoints applied."""
    image = ImageWorkerConfig.load(args.image_config)
    understanding = UnderstandingWorkerConfig.load(args.understanding_config)
    if args.image_checkpoints:
        root = Path(args.image_checkpoints).expanduser().resolve()
        image.model.model_dir = str(root / f"shapes-{image.model.backend}")
        understanding.model.model_dir = str(root / "shapes-orthus")
    return image, understanding


async def run(args: argparse.Namespace) -> None:
    from ray import serve

    from services.workers.image.server import start_image_worker
    from services.workers.text.server import start_text_worker
    from services.workers.understanding.server import start_understanding_worker

    key = dev_api_key()
    os.environ["TESSERA_API_KEYS"] = f"dev:{hash_key(key)}"
    redis = RedisServer(port=args.redis_port).start()
    log.info("redis-server %s on port %d", redis.binary, redis.port)
    gateway: Gateway | None = None
    try:
        log.info("starting Ray and the text worker (first start takes ~20 s)...")
        # Logical CPUs: each replica asks for one and runs one torch thread; three replicas must fit on
        # a 2-core laptop (they mostly wait for requests).
        await asyncio.to_thread(start_text_worker, args.worker_config, args.worker_port, args.http_port,
                                num_cpus=max(4, os.cpu_count() or 1))
        cfg = GatewayConfig.load(args.gateway_config)
        image_cfg, understanding_cfg = image_configs(args)
        images = image_cfg.model.path.exists() and understanding_cfg.model.path.exists()
        if images:
            log.info("starting the image and understanding workers (%s)...", image_cfg.model.path.parent)
            await asyncio.to_thread(start_image_worker, image_cfg, args.worker_port, args.http_port)
            await asyncio.to_thread(start_understanding_worker, understanding_cfg, args.worker_port, args.http_port)
            cfg.images.models = [image_cfg.model.name]
            cfg.understanding.models = [understanding_cfg.model.name]
        else:
            log.warning("image checkpoints not found (%s, %s): serving text only; train them with "
                        "`python -m lab.training.images` or pass --image-checkpoints DIR",
                        image_cfg.model.path, understanding_cfg.model.path)
            cfg.dispatcher.services = ["text"]
        cfg.host, cfg.port, cfg.metrics_port, cfg.redis_url = args.host, args.port, args.metrics_port, redis.url
        cfg.dispatcher.worker_address = f"127.0.0.1:{args.worker_port}"
        gateway = Gateway(cfg)
        port = await gateway.start()
        print(banner(args, port, key, redis.url, images), flush=True)
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


def banner(args: argparse.Namespace, port: int, key: str, redis_url: str, images: bool) -> str:
    cli = f"{Path(sys.executable).parent / 'tessera'} --address 127.0.0.1:{port} --api-key {key}"
    lines = [f"  {cli} text {shlex.quote(DEMO)}"]
    if images:
        lines += [f"  {cli} image {shlex.quote(IMAGE_DEMO)} --size 256 -o out.png",
                  f"  {cli} edit out.png {shlex.quote(EDIT_DEMO)} --size 256 -o edited.png",
                  f"  {cli} ask out.png {shlex.quote(ASK_DEMO)}"]
    workers = "text, image, understanding" if images else "text (no image checkpoints)"
    return (f"\nTessera is up.\n  gateway  {args.host}:{port} (gRPC, API key required)\n"
            f"  metrics  http://127.0.0.1:{args.metrics_port}/metrics\n  workers  {workers} behind the Ray Serve "
            f"gRPC proxy 127.0.0.1:{args.worker_port}\n  redis    {redis_url}\n\nTry it in another terminal:\n\n"
            + "\n".join(lines) + "\n\nCtrl-C stops everything.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=int(os.environ.get("TESSERA_GATEWAY_PORT", 50051)))
    ap.add_argument("--worker-port", type=int, default=9000)
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=9464)
    ap.add_argument("--redis-port", type=int, default=0, help="0 = a free port")
    ap.add_argument("--worker-config", default=str(ROOT / "services/workers/text/config.yaml"))
    ap.add_argument("--gateway-config", default=str(ROOT / "services/gateway/config.yaml"))
    ap.add_argument("--image-config", default=str(ROOT / "services/workers/image/config.yaml"))
    ap.add_argument("--understanding-config", default=str(ROOT / "services/workers/understanding/config.yaml"))
    ap.add_argument("--image-checkpoints", default=os.environ.get("TESSERA_IMAGE_CHECKPOINTS", ""),
                    help="directory holding shapes-orthus / shapes-nextstep (env TESSERA_IMAGE_CHECKPOINTS; "
                         "default: the model_dir of each worker config)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
