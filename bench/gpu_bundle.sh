#!/usr/bin/env bash
# Build .gpu/ for bench/gpu_search.sh: ../shared/gpu/bundle.sh, with perf_analyzer from the tritonclient 2.43.0 wheel
# greentune fetches (timestamps-only export) instead of 2.51. Needs `greentune doctor --fetch` done first.
set -euo pipefail
cd "$(dirname "$0")/.."
pa=${GREENTUNE_CACHE:-$HOME/.cache/greentune}/perf_analyzer-2.43.0/bin/perf_analyzer
[ -x "$pa" ] || { echo "no $pa: run greentune doctor --fetch first"; exit 1; }
mkdir -p .gpu
if ! cmp -s "$pa" <(xz -dc .gpu/perf_analyzer.xz 2>/dev/null); then xz -6 -T0 -c "$pa" > .gpu/perf_analyzer.xz; fi
bash "${SHARED_GPU:-../shared/gpu}/bundle.sh"
