"""The worker framework: every model family served by one Ray Serve deployment class behind Serve's
gRPC proxy (tessera.worker.v1).

A request's path through here: Serve's gRPC proxy -> server.WorkerServer (the one deployment class:
metrics, cancellation, health) -> the family's engine (<family>/engine.py: request mapping) -> models/.
A family (text/, image/, understanding/) contributes its args (config.py), its engine and its RPC
table (family.py); builders.py makes each a Serve application builder, and serve_config.yaml, in
Serve's own format, describes every app. `python -m services.workers [APP ...]` deploys from it.
"""
