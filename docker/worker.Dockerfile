# syntax=docker/dockerfile:1
# tessera/worker: the Ray head and worker pods of the chart's RayService (KubeRay runs `ray start`;
# Serve imports services.workers.builders and the tessera.worker.v1 stubs from here).
#
# The Ray image of the project's pinned Ray (pyproject.toml) for Python 3.11, CUDA 12.8 build
# (rayproject/ray tags: <ray>-py<xy>-cu<xy>; "-gpu" is a moving alias to an older CUDA, so the
# CUDA tag is named). torch comes from the PyTorch CUDA wheel index of the same CUDA; every other
# runtime dependency from pyproject.toml at requirements.lock's versions. The project sits at
# /home/ray/tessera in the repository's layout (services/, models/, checkpoints/ side by side), so
# the Serve config's relative model_dirs (checkpoints/...) resolve as they do in a checkout.
#
#   docker build -f docker/worker.Dockerfile -t tessera/worker:0.1.0-cuda .   (or `make image-worker`)
#
# Runs as the Ray image's own user (ray, uid 1000), which owns its Python environment.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Made by the ray user (a WORKDIR alone may be root's), who then writes the editable install's metadata.
RUN mkdir -p /home/ray/tessera
WORKDIR /home/ray/tessera

# The lock's torch line is the CPU build of the dev machines, so it is left out of the constraints:
# torch is the CUDA build from TORCH_INDEX_URL (its own dependencies from PyPI, at the lock's versions).
COPY --chown=ray:users requirements.lock pyproject.toml README.md ./
RUN grep -v '^torch==' requirements.lock > /tmp/constraints.txt \
    && python -m pip install -c /tmp/constraints.txt --index-url "${TORCH_INDEX_URL}" \
       --extra-index-url https://pypi.org/simple "torch==${TORCH_VERSION}" \
    && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
       > /tmp/runtime-deps.txt \
    && python -m pip install -c /tmp/constraints.txt -r /tmp/runtime-deps.txt \
    && python -c "import torch, ray; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}' and torch.version.cuda, torch.__version__"

# The project (editable: imports resolve to this directory, where checkpoints/ lies beside services/)
# and the SDK's generated stubs (tessera.v1, tessera.worker.v1).
COPY --chown=ray:users sdk/ sdk/
COPY --chown=ray:users models/ models/
COPY --chown=ray:users services/ services/
COPY --chown=ray:users checkpoints/ checkpoints/
RUN python -m pip install --no-deps -e . ./sdk \
    && python -c "import services.workers.builders, tessera.worker.v1.worker_pb2_grpc"
