"""The KServe path: a worker family served by `kserve.ModelServer` over the Open Inference Protocol
(v2 REST and gRPC `inference.GRPCInferenceService`), on the same engines as the Ray Serve workers.

- `tensors.py`: the tensor mapping of each family (request tensors and parameters -> the worker API's
  requests; the engine's answers -> response tensors), following the Triton/TensorRT-LLM convention.
- `model.py`: `FamilyModel`, one `kserve.Model` over a family's engine.
- `generate.py`: Triton's generate extension on KServe's REST app (`/generate`, `/generate_stream` as
  server-sent events): the streaming OIP itself lacks.
- `__main__.py`: `python -m services.workers.kserve --family text [--config FILE]`.
"""
