"""The job queue: the durable hand-off between the gateway and the dispatchers, kept in Redis.

The gateway submits jobs here and reads their events back; dispatchers claim them, stream their
events in and end them exactly once. Nothing else talks to Redis about jobs.

- `kinds.py`: the kinds of job (text, image, edit, understand) and the worker service each runs on.
- `jobstore.py`: JobStore, every Redis command and key of a job's life (streams, records, scripts).
- `resp.py`: the pipelined Redis client the job store's hot path runs on.
- `redis_server.py`: a private redis-server for one-machine runs and the tests.
"""
