"""`python -m services.workers.text --config services/workers/text/config.yaml --grpc-port 9000`."""

from services.workers.text.server import main

if __name__ == "__main__":
    main()
