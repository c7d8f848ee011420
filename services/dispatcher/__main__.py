"""A standalone dispatcher process: `python -m services.dispatcher [--config gateway.yaml]`.

The gateway runs dispatchers in-process by default; run this to scale them separately. It runs one
dispatcher per service in `dispatcher.services` (text, image, understanding).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.jobstore import JobStore
from services.common.metrics import Metrics
from services.dispatcher.dispatcher import dispatch_all
from services.gateway.config import GatewayConfig


async def _run(cfg: GatewayConfig, metrics_port: int) -> None:
    store = JobStore.from_url(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.job_ttl_s)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port)
    await dispatch_all(store, cfg.dispatcher, metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config")
    ap.add_argument("--metrics-port", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(GatewayConfig.load(args.config), args.metrics_port))


if __name__ == "__main__":
    main()
