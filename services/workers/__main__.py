"""Run worker apps from the Serve config file: `python -m services.workers [text|image|understanding ...]`.

Starts (or joins, with RAY_ADDRESS) Ray, starts Serve with the file's proxies, deploys the named apps
(default: all of them) exactly as `serve run <file>` would, and waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Sequence

import ray
from ray import serve

from services.workers import serve_config
from services.workers.deploy import deploy, start_serve


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m services.workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("apps", nargs="*", help="app names from the config (default: all)")
    ap.add_argument("--config", default=str(serve_config.DEFAULT_PATH), help="Serve config file")
    ap.add_argument("--grpc-port", type=int, default=None, help="override grpc_options.port")
    ap.add_argument("--http-port", type=int, default=None, help="override http_options.port")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    ap.add_argument("--check", action="store_true", help="validate the config and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        schema = serve_config.configure(serve_config.read(args.config), only=args.apps or None,
                                        grpc_port=args.grpc_port, http_port=args.http_port)
    except ValueError as e:
        raise SystemExit(f"{args.config}: {e}") from None
    names = [a.name for a in schema.applications]
    if args.check:
        print(f"{args.config}: valid; apps {names}")
        return
    # SIGTERM (docker stop, the stack's supervisor) and a SIGINT that a launching shell set to
    # "ignore" must both reach the cleanup below, or the local Ray's agents outlive us.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        start_serve(schema, num_cpus=args.num_cpus)
        deploy(schema)
        print(f"worker apps {names} up: gRPC localhost:{schema.grpc_options.port}, metadata "
              "('application', <name>); Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
