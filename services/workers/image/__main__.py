"""`python -m services.workers.image --config services/workers/image/config.yaml --grpc-port 9000`."""

from services.workers.image.server import main

if __name__ == "__main__":
    main()
