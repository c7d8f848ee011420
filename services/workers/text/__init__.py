"""The text family: a D2F diffusion LLM (or its AR / vanilla / Fast-dLLM baselines) serving
TextWorkerService."""
