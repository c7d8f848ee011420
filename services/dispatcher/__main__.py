"""A standalone dispatcher process: `python -m services.dispatcher [--config services/dispatcher/config.yaml]`.

The gateway runs dispatchers in-process by default; run this to scale them separately. It runs one
dispatcher per service in `dispatcher.services` (text, image, understanding). Its config is its own
(config.py): the job store to consume, and the same `dispatcher:` section the gateway's config has.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherProcessConfig
from services.dispatcher.dispatcher import dispatch_all
from services.queue.jobstore import JobStore


async def _run(cfg: DispatcherProcessConfig, metrics_port: int, grace_s: float) -> None:
    store = JobStore.from_url(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.job_ttl_s)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port)
    # SIGTERM (a scale-in, a rollout) drains: running jobs get grace_s to finish, the rest are handed
    # back to the other dispatchers at once.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await dispatch_all(store, cfg.dispatcher, metrics, stop=stop, grace_s=grace_s)
    finally:
        await store.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", help="YAML file (default: built-in defaults; see services/dispatcher/config.yaml)")
    ap.add_argument("--metrics-port", type=int, default=0)
    ap.add_argument("--grace-s", type=float, default=20.0,
                    help="on SIGTERM, seconds running jobs get to finish before they are handed back")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(DispatcherProcessConfig.load(args.config), args.metrics_port, args.grace_s))


if __name__ == "__main__":
    main()
