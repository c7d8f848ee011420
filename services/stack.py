"""The whole stack on one machine (`make run`): Redis, Ray + the Serve text worker behind its gRPC
proxy, and the gateway with its dispatcher. Prints the address and a ready-to-paste command;
Ctrl-C stops everything it started.

    python -m services.stack [--port 50051] [--worker-port 9000] [--metrics-port 9464]
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

ROOT = Path(__file__).resolve().parents[1]
DEMO = "Mia has 12 shells. She finds 7 more. She gives away 3. She buys 5 more. How many shells does Mia have now?"
log = logging.getLogger("tessera.stack")


def dev_api_key() -> str:
    """A per-checkout development key, kept in .tessera/ so the printed command stays valid."""
    path = ROOT / ".tessera" / "dev-api-key"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


async def run(args: argparse.Namespace) -> None:
    from ray import serve

    from services.workers.text.server import start_text_worker

    key = dev_api_key()
    os.environ["TESSERA_API_KEYS"] = f"dev:{hash_key(key)}"
    redis = RedisServer(port=args.redis_port).start()
    log.info("redis-server %s on port %d", redis.binary, redis.port)
    gateway: Gateway | None = None
    try:
        log.info("starting Ray and the text worker (first start takes ~20 s)...")
        await asyncio.to_thread(start_text_worker, args.worker_config, args.worker_port, args.http_port,
                                num_cpus=os.cpu_count())
        cfg = GatewayConfig.load(args.gateway_config)
        cfg.host, cfg.port, cfg.metrics_port, cfg.redis_url = args.host, args.port, args.metrics_port, redis.url
        cfg.dispatcher.worker_address = f"127.0.0.1:{args.worker_port}"
        gateway = Gateway(cfg)
        port = await gateway.start()
        cli = Path(sys.executable).parent / "tessera"
        print(f"\nTessera is up.\n  gateway  {args.host}:{port} (gRPC, API key required)\n"
              f"  metrics  http://127.0.0.1:{args.metrics_port}/metrics\n  worker   Ray Serve gRPC proxy "
              f"127.0.0.1:{args.worker_port}\n  redis    {redis.url}\n\nTry it in another terminal:\n\n"
              f"  {cli} --address 127.0.0.1:{port} --api-key {key} text {shlex.quote(DEMO)}\n\n"
              "Ctrl-C stops everything.\n", flush=True)
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
