"""The image worker: Orthus or NextStep as a Ray Serve deployment serving ImageWorkerService, with a
micro-batcher that runs concurrent requests as one batched model call."""
