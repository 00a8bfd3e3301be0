#!/usr/bin/env bash
# `bash bench/gpu_search.sh` on a GPU machine (issue 18), after `bash bench/gpu_bundle.sh` built .gpu/ here.
# One call, one machine: a 10-trial `greentune search` of the reference fp16 MLP with the defaults (space gpu,
# engine auto = perf_analyzer, NVML on GPU 0, concurrency 32, p99 <= 25 ms), then a 9-config grid over the region
# that matters (instances 1-3 x dynamic batching off / 200 us / 1000 us at max batch 64) with the same engine and
# settings; prints best found / grid best, trials, wall time and every failed or screened trial with its reason.
# Then (PARTS has cost) bench/pa_trial_cost.py: a perf_analyzer-engine trial of the fastest config against its floor
# (model load + warm-up + windows) and against perf_analyzer without export, same server, same meters.
# env: PY (python3), KIND (KIND_GPU), METER (nvml), TRIALS (10), LIMIT_S (570: the grid gets what the search left),
#      PARTS ("search grid cost"; e.g. PARTS=cost for a second call).
# CPU dry run: PY=python3.12 KIND=KIND_CPU METER=estimate GMLP_DIMS=1024,64,1024 bash bench/gpu_search.sh
set -u
export PYTHONUNBUFFERED=1
. "$(dirname "$0")/gpu_setup.sh"  # ROOT, G, O, W, PY, KIND, METER, R, el
TRIALS=${TRIALS:-10}; LIMIT_S=${LIMIT_S:-570}
PARTS=${PARTS:-search grid cost}; has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
SP=$W/gpu.yaml; sed "s/KIND_GPU/$KIND/" "$ROOT/search_spaces/gpu.yaml" > "$SP"
GRID=$W/grid9.yaml; cat > "$GRID" <<YAML
version: 1
description: instances 1-3 x dynamic batching off / 200 us / 1000 us, max batch 64 (bench/gpu_search.sh)
knobs:
  instance_kind: $KIND
  instance_count: {type: choice, choices: [1, 2, 3]}
  max_batch_size: 64
  dynamic_batching: {type: bool}
  max_queue_delay_microseconds: {type: choice, choices: [200, 1000]}
YAML
M=(--energy-meter "$METER"); [ "$METER" = nvml ] && M+=(--gpus 0)
L=(-c 32 --max-p99-ms 25 --window 5 --max-windows 4 "${M[@]}")
el setup
search_s=0; grid_s=0
if has search; then
  s0=$(date +%s)
  timeout 330 "$PY" -m tuner search -r "$R" -m gmlp --space "$SP" --trials "$TRIALS" "${L[@]}" -o "$W/search" > "$O/search.txt" 2>&1
  rc=$?; search_s=$(( $(date +%s) - s0 )); el "search rc=$rc in $search_s s"; tail -25 "$O/search.txt"
fi
if has grid; then
  g0=$(date +%s); left=$(( LIMIT_S - (g0 - t0) )); [ "$left" -lt 60 ] && left=60
  timeout "$left" "$PY" -m tuner search -r "$R" -m gmlp --space "$GRID" --sampler grid --trials 10 --no-screening "${L[@]}" -o "$W/grid" > "$O/grid.txt" 2>&1
  rc=$?; grid_s=$(( $(date +%s) - g0 )); el "grid rc=$rc in $grid_s s"; tail -8 "$O/grid.txt"
fi
for d in search grid; do cp "$W/$d/trials.csv" "$O/trials_$d.csv" 2>/dev/null; cp "$W/$d/summary.json" "$O/summary_$d.json" 2>/dev/null; done
cp "$W/search/report.md" "$O/report_search.md" 2>/dev/null
if has search && has grid; then
  "$PY" "$ROOT/bench/search_vs_grid.py" "$W/grid" "$W/search" --search-seconds "$search_s" --grid-seconds "$grid_s" 2>&1 | tee "$O/compare.txt"
fi
if has cost; then
  C=(-r "$R" -m gmlp -c 32 --window 5 --max-windows 4 --energy-meter "$METER"); [ "$METER" = nvml ] && C+=(--gpus 0)
  timeout 200 "$PY" "$ROOT/bench/pa_trial_cost.py" "${C[@]}" --json "$O/cost.json" > "$O/cost.txt" 2>&1
  el "cost rc=$?"; tail -6 "$O/cost.txt"
fi
sleep 1; echo "left behind:"; pgrep -af 'tritonserver|triton_python_backend_stub|perf_analyzer' | grep -v pgrep || echo none
nvidia-smi --query-gpu=name,power.limit,memory.used --format=csv 2>&1 | tee -a "$O/smi.txt"
el done
