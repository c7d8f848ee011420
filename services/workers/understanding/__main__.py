"""`python -m services.workers.understanding --config services/workers/understanding/config.yaml`."""

from services.workers.understanding.server import main

if __name__ == "__main__":
    main()
