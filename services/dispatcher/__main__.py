"""A standalone dispatcher process: `python -m services.dispatcher [--config services/dispatcher/config.yaml]`.

The gateway runs dispatchers in-process by default; run this to scale them separately. It runs one
dispatcher per service in `dispatcher.services` (text, image, understanding). Its config is its own
(config.py): the job store to consume, and the same `dispatcher:` section the gateway's config has.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from services.common import logs
from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherProcessConfig
from services.dispatcher.dispatcher import dispatch_all
from services.queue.jobstore import JobStore


async def _run(cfg: DispatcherProcessConfig, metrics_port: int, metrics_host: str, grace_s: float) -> None:
    store = JobStore.from_url(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.job_ttl_s)
    metrics = Metrics()
    if metrics_port:
        metrics.serve(metrics_port, metrics_host)
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
    ap.add_argument("--metrics-host", default="127.0.0.1", help="0.0.0.0 where Prometheus scrapes from elsewhere")
    ap.add_argument("--grace-s", type=float, default=20.0,
                    help="on SIGTERM, seconds running jobs get to finish before they are handed back")
    ap.add_argument("--log-format", choices=("json", "text"), default="json",
                    help="json: one object per line with job_id / request_id / call_id fields (default)")
    args = ap.parse_args()
    logs.setup(args.log_format)
    asyncio.run(_run(DispatcherProcessConfig.load(args.config), args.metrics_port, args.metrics_host, args.grace_s))


if __name__ == "__main__":
    main()
