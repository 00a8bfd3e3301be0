#!/usr/bin/env bash
# Two models on one GPU, tuned together (search --models): the reference model twice (gmlp_a under a closed loop,
# gmlp_b under an open-loop rate), 8 trials with NVML, then each model alone for what sharing the GPU saves.
# On the GPU machine: `bash .gpu/set_accept.sh` after `bash bench/gpu/bundle_set.sh` here (which runs
# ../shared/gpu/bundle.sh and adds this script). About 7 minutes.
# env: PY (python3), KIND (KIND_GPU), METER (nvml), TRIALS (8), BUDGET (300s), SPACE (gpu), CONC_A (32),
#      RATE_B (1500 requests/s), P99 (25 ms), WINDOW (5 s), GMLP (the reference model folder, default .gpu/gmlp),
#      NO_BUNDLE=1 (a dry run here: greentune as installed, no server cache or wheels unpacked).
# CPU dry run from the repository root: NO_BUNDLE=1 PY=.venv/bin/python KIND=KIND_CPU METER=estimate SPACE=cpu \
#   GMLP=../shared/gpu/device/gmlp GMLP_DIMS=1024,64,1024 TRIALS=2 WINDOW=1 RATE_B=50 P99=500 bash bench/gpu/set_accept.sh
set -u
export PYTHONUNBUFFERED=1
G=$(cd "$(dirname "$0")" && pwd); ROOT=$(dirname "$G")
SRC=$ROOT; [ -d "$G/main/tuner" ] && SRC=$G/main
O=${OUT:-/tmp/gpu_out}; mkdir -p "$O"
W=${WORK:-/tmp/gt_set}; rm -rf "$W"; mkdir -p "$W"
PY=${PY:-python3}; METER=${METER:-nvml}; TRIALS=${TRIALS:-8}; BUDGET=${BUDGET:-300s}; SPACE=${SPACE:-gpu}
GMLP=${GMLP:-$G/gmlp}
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,memory.used --format=csv > "$O/set_smi.txt" 2>&1
if [ -z "${NO_BUNDLE:-}" ]; then
  export GREENTUNE_CACHE=$W/cache; mkdir -p "$GREENTUNE_CACHE"
  tar -xJf "$G/triton_cache.tar.xz" -C "$GREENTUNE_CACHE" || { echo "payload unpack failed"; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" "$G"/whl/*.whl \
    || { echo "pip install failed"; exit 1; }
  export PYTHONPATH=$W/site:$SRC
fi
R=$W/repo; mkdir -p "$R"
for m in gmlp_a gmlp_b; do
  cp -r "$GMLP" "$R/$m"; sed -i "s/name: \"gmlp\"/name: \"$m\"/" "$R/$m/config.pbtxt"
  [ -n "${KIND:-}" ] && sed -i "s/KIND_GPU/$KIND/" "$R/$m/config.pbtxt"
done
cat > "$W/set.yaml" <<EOF
models:
  gmlp_a: {concurrency: ${CONC_A:-32}, max_p99_ms: ${P99:-25}, shape: "X:1024"}
  gmlp_b: {request_rate: ${RATE_B:-1500}, max_p99_ms: ${P99:-25}, shape: "X:1024"}
EOF
el "setup done"; cat "$W/set.yaml"
EXTRA=(); [ "$METER" = nvml ] && EXTRA+=(--gpus 0)
timeout 540 "$PY" -m tuner search -r "$R" --models "$W/set.yaml" --space "$SPACE" --energy-meter "$METER" "${EXTRA[@]}" \
  --warmup 2 --window "${WINDOW:-5}" --max-windows 4 --trials "$TRIALS" --timeout "$BUDGET" --seed 0 \
  -o "$W/search" > "$O/set_search.txt" 2>&1
el "set search rc=$?"; tail -45 "$O/set_search.txt"
"$PY" - "$W/search/summary.json" <<'EOF' | tee "$O/set_sharing.txt"
import json, sys
s = json.load(open(sys.argv[1]))
share = s.get("sharing") or {}
print("best trial", (s.get("best") or {}).get("trial"), "set infer/J",
      ((s.get("best") or {}).get("measurement") or {}).get("inferences_per_j"))
print("sharing saving", share.get("saving_fraction"), "together W", (share.get("together") or {}).get("power_w"),
      "separate W", share.get("separate_power_w"), share.get("energy_source"), share.get("reason", ""))
for model, alone in (share.get("alone") or {}).items():
    print(" alone", model, {k: alone.get(k) for k in ("inferences_per_s", "power_w", "joules_per_inference", "error")})
EOF
sleep 2; echo "left behind:"; pgrep -af 'tritonserver|triton_python_backend_stub' | grep -v pgrep || echo none
nvidia-smi --query-gpu=name,power.limit,power.draw,memory.used --format=csv >> "$O/set_smi.txt" 2>&1
cp "$W/search/report.html" "$O/set_report.html" 2>/dev/null; cp "$W/search/summary.json" "$O/set_summary.json" 2>/dev/null
el "done"; ls -la "$O"
