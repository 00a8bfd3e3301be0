#!/usr/bin/env bash
# The README's test command: make a virtual environment, install greentune with its test extras, lint, type-check, test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
.venv/bin/ruff check .
.venv/bin/mypy
# Fetches the embedded Triton server into the cache once (pip download --no-deps nvidia-pytriton).
.venv/bin/greentune doctor --fetch >/dev/null
.venv/bin/python -m pytest tests "$@"
