#!/usr/bin/env bash
# Build .gpu/ for a GPU machine (../shared/gpu/bundle.sh) and add the two-model check, set_accept.sh.
# usage, from the repository root: bash bench/gpu/bundle_set.sh [PROJECT_DIR]; then on the GPU machine, with .gpu/
# carried along: bash .gpu/set_accept.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/../../../shared/gpu/bundle.sh" "$@"
cp "$here/set_accept.sh" .gpu/
echo "two models on one GPU: bash .gpu/set_accept.sh"
