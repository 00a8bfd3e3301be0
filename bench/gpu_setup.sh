# Sourced by bench/gpu_*.sh on a GPU machine: unpack .gpu/ (bench/gpu_bundle.sh) into WORK and point greentune at it.
# Sets ROOT, G, O (OUT), W (WORK), PY, KIND, METER, R (a model repository holding gmlp), t0 and el(); exits on failure.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); G=$ROOT/.gpu
O=${OUT:-/tmp/gpu_out}; mkdir -p "$O"; W=${WORK:-/tmp/gt}; rm -rf "$W"; mkdir -p "$W"
PY=${PY:-python3}; KIND=${KIND:-KIND_GPU}; METER=${METER:-nvml}
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=name,driver_version,power.limit,memory.used --format=csv 2>&1 | tee "$O/smi.txt"
export GREENTUNE_CACHE=$W/cache; mkdir -p "$GREENTUNE_CACHE"; tar -xJf "$G/triton_cache.tar.xz" -C "$GREENTUNE_CACHE" || exit 1
# Where greentune looks for the perf_analyzer it fetches (tuner/engines/pa_install.py: tritonclient 2.43.0).
PA=$GREENTUNE_CACHE/perf_analyzer-2.43.0/bin; mkdir -p "$PA"; xz -dc "$G/perf_analyzer.xz" > "$PA/perf_analyzer"; chmod +x "$PA/perf_analyzer"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$W/site" "$G"/whl/*.whl || exit 1
export PYTHONPATH=$W/site:$ROOT
R=$W/repo; mkdir -p "$R"; cp -r "$G/gmlp" "$R/"
[ "$KIND" != KIND_GPU ] && sed -i "s/KIND_GPU/$KIND/" "$R/gmlp/config.pbtxt"
