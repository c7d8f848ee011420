"""The understanding worker: Orthus answering questions about images (UnderstandingWorkerService), as a
Ray Serve deployment with the same micro-batcher as the image worker."""
