"""A standalone dispatcher process: `python -m services.dispatcher [--config services/dispatcher/config.yaml]`.

The gateway runs dispatchers in-process by default; run this to scale them separately. It runs one
dispatcher per service in `dispatcher.services` (text, image, understanding). Its config is its own
(config.py): the job store to consume, and the same `dispatcher:` section the gateway's config has.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherProcessConfig
from services.dispatcher.dispatcher import dispatch_all
from services.queue.jobstore import JobStore


async def _run(cfg: DispatcherProcessConfig, metrics_port: int) -> None:
    store = JobStore.from_url(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.job_ttl_s)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port)
    await dispatch_all(store, cfg.dispatcher, metrics)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="YAML file (default: built-in defaults; see services/dispatcher/config.yaml)")
    ap.add_argument("--metrics-port", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(DispatcherProcessConfig.load(args.config), args.metrics_port))


if __name__ == "__main__":
    main()
