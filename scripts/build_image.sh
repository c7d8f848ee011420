#!/usr/bin/env bash
# Build one container image: scripts/build_image.sh DOCKERFILE NAME:TAG (what `make image-*` runs).
# The base image is the Dockerfile's `ARG BASE_IMAGE=` default. Without a usable container engine, or
# without the base image present locally, the build is skipped with a message saying why, and exits 0:
# the project's machines have no registry to pull a base image from (load one with `docker load`).
# DOCKER names the engine's client (default: docker).
set -euo pipefail
dockerfile=${1:?usage: build_image.sh DOCKERFILE NAME:TAG}
tag=${2:?usage: build_image.sh DOCKERFILE NAME:TAG}
docker=${DOCKER:-docker}
base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile" | head -n 1)
[ -n "$base" ] || { echo "build_image.sh: no 'ARG BASE_IMAGE=' in $dockerfile" >&2; exit 2; }

skip() { echo "Skipping $tag ($dockerfile): $*"; exit 0; }
command -v "$docker" >/dev/null 2>&1 \
  || skip "no container engine: '$docker' is not on PATH."
"$docker" info >/dev/null 2>&1 \
  || skip "'$docker' is on PATH but its daemon does not answer ('$docker info' failed)."
"$docker" image inspect "$base" >/dev/null 2>&1 \
  || skip "base image $base is not present locally, and this machine cannot pull it (no registry);" \
          "'$docker load' it first."
echo "Building $tag from $dockerfile (base $base)"
exec "$docker" build -f "$dockerfile" -t "$tag" .
