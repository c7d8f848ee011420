# syntax=docker/dockerfile:1
# tessera/gateway: the gateway (`python -m services.gateway`) and the dispatchers
# (`python -m services.dispatcher`); the Helm chart sets the command, so there is no ENTRYPOINT.
#
# Slim on purpose: the gateway and dispatcher import neither torch nor Ray (tests/test_images.py checks
# it), so this image does not install the project (its pyproject.toml pulls torch, Ray and kserve for
# the workers). It installs docker/gateway-requirements.txt (requirements.lock's pins, --no-deps, then
# `pip check`) and the SDK's generated stubs into a venv, and copies only the services it runs to /app.
#
#   docker build -f docker/gateway.Dockerfile -t tessera/gateway:0.1.0 .   (or `make image-gateway`)
#
# Runs as uid/gid 10001 (the chart's runAsUser) with a read-only root filesystem: sources and the
# venv are root-owned and byte-compiled at build time; only /tmp (an emptyDir in the chart) is written.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY docker/gateway-requirements.txt /tmp/build/gateway-requirements.txt
COPY sdk/ /tmp/build/sdk/
RUN /opt/venv/bin/pip install --no-deps -r /tmp/build/gateway-requirements.txt /tmp/build/sdk \
    && /opt/venv/bin/pip check

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 tessera \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin tessera
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# What services.gateway and services.dispatcher import (tests/test_images.py checks the list), with
# their default config files; services.workers contributes only its protocol constants.
COPY services/__init__.py services/
COPY services/common/ services/common/
COPY services/queue/ services/queue/
COPY services/gateway/ services/gateway/
COPY services/dispatcher/ services/dispatcher/
COPY services/workers/__init__.py services/workers/protocol.py services/workers/
RUN python -m compileall -q /app
USER 10001:10001
