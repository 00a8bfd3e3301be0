#!/usr/bin/env bash
# `bash bench/gpu_engines.sh` (after `bash bench/gpu_bundle.sh` made .gpu/): issue 13/14 on a GPU. The same 2x2 grid of the reference model (instances 1-2 x dynamic
# batching off/on, max batch 64, concurrency 32, NVML on GPU 0) searched by greentune with each load engine
# (perf_analyzer, then built-in), in one call; then a 3-trial shared (journal) study with the default engine.
# env: PY, KIND (KIND_GPU), METER (nvml), WIN (5), MAXW (3). Dry run on CPU: KIND=KIND_CPU METER=estimate GMLP_DIMS=1024,64,1024
set -u
export PYTHONUNBUFFERED=1
. "$(dirname "$0")/gpu_setup.sh"  # ROOT, G, O, W, PY, KIND, METER, R, el
WIN=${WIN:-5}; MAXW=${MAXW:-3}
sp=$W/grid2x2.yaml; sed "s/KIND_GPU/$KIND/" "$G/grid2x2.yaml" > "$sp"
el setup
M=(--energy-meter "$METER"); [ "$METER" = nvml ] && M+=(--gpus 0)
L=(-c 32 --warmup 2 --window "$WIN" --max-windows "$MAXW" "${M[@]}")
for eng in ${ENGINES:-perf_analyzer builtin}; do
  timeout ${GRID_TIMEOUT:-230} "$PY" -m tuner search -r "$R" -m gmlp --space "$sp" --sampler grid --trials 5 --load-generator $eng \
    "${L[@]}" -o "$W/grid_$eng" > "$O/grid_$eng.txt" 2>&1
  el "grid $eng rc=$?"; tail -14 "$O/grid_$eng.txt"
  cp "$W/grid_$eng/trials.csv" "$O/trials_$eng.csv" 2>/dev/null; cp "$W/grid_$eng/summary.json" "$O/summary_$eng.json" 2>/dev/null
  pgrep -af 'tritonserver|triton_python_backend_stub|perf_analyzer' | grep -v pgrep || echo "none left"
done
if [ "${SHARED:-1}" = 1 ] && [ $(( $(date +%s) - t0 )) -lt 390 ]; then
  timeout 120 "$PY" -m tuner search -r "$R" -m gmlp --space "$sp" --trials 3 --storage "journal://$W/shared.journal" \
    --study gmlp-h100 "${L[@]}" -o "$W/shared" > "$O/shared.txt" 2>&1
  el "shared rc=$?"; tail -12 "$O/shared.txt"
  timeout 30 "$PY" -m tuner report --storage "journal://$W/shared.journal" --study gmlp-h100 -o "$W/shared_report" > "$O/shared_report.txt" 2>&1
  el "report rc=$?"; tail -5 "$O/shared_report.txt"; cp "$W/shared_report/report.md" "$O/shared_report.md" 2>/dev/null
fi
sleep 1; echo "left behind:"; pgrep -af 'tritonserver|triton_python_backend_stub|perf_analyzer' | grep -v pgrep || echo none
nvidia-smi --query-gpu=name,power.limit,memory.used --format=csv 2>&1 | tee -a "$O/smi.txt"
el done
