#!/usr/bin/env bash
# The README's test command: make a virtual environment, install greentune with its test extras, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/hadolint Dockerfile
# Fetches the embedded Triton server into the cache once (pip download --no-deps nvidia-pytriton).
.venv/bin/greentune doctor --fetch >/dev/null
# Docker-launcher tests need a Docker Engine API and a Triton image: where podman and debootstrap are
# installed (and we are root), start Podman's API and build a local CPU Triton image (cached).
if [ "$(id -u)" = 0 ] && command -v podman >/dev/null && command -v debootstrap >/dev/null; then
  sock=/run/greentune-podman.sock
  image=localhost/greentune-triton-cpu:2.51
  bash scripts/start_podman_api.sh "$sock"
  bash scripts/build_cpu_triton_image.sh "$image"
  export GREENTUNE_TEST_DOCKER_HOST="unix://$sock" GREENTUNE_TEST_IMAGE="$image"
fi
# Shared-study tests need PostgreSQL: where Debian's postgresql is installed (and we are root), start it.
if [ "$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null; then
  GREENTUNE_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh | tail -n 1)
  export GREENTUNE_TEST_POSTGRES_URL
fi
.venv/bin/python -m pytest tests "$@"
