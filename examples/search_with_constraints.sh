#!/usr/bin/env bash
# A constrained search of the example model on the embedded CPU server, with real inputs in perf_analyzer's
# JSON format, each config driven to the highest load that keeps p99 within 20 ms, and the reports re-rendered.
# usage: examples/search_with_constraints.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/constrained}
greentune=${GREENTUNE:-.venv/bin/greentune}
"$greentune" search \
  --model-repository model_repository --model mlp \
  --space examples/cpu_small.yaml \
  --concurrency auto --max-p99-ms 20 --min-throughput 500 \
  --input-data examples/mlp_inputs.json \
  --trials 8 --patience 4 --repeats 2 \
  --output "$out" || status=$?
# exit 3 (no feasible config) still writes summary.json; the reports show the closest trial
"$greentune" report "$out"
exit "${status:-0}"
