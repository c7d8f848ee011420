"""Model workers: Ray Serve deployments behind Ray Serve's gRPC proxy (tessera.worker.v1)."""
