"""What does a perf_analyzer-engine trial cost over its floor, and does it read what perf_analyzer alone reads?

One embedded Triton server, one config (default: the reference GPU model's best known, 3 instances, max batch 64,
dynamic batching 200 us). Times the trial as the search runs it: model load, then greentune's measurement with the
perf_analyzer engine (warm-up, windows until stable, stop and export). The floor is model load + warm-up + the
windows measured; the ratio trial / floor is printed (target <= 1.2). Then, on the same loaded config, perf_analyzer
runs again WITHOUT an export for as many windows of the same length, metered by the same meters, with throughput from
Triton's own nv_inference_count over each window (the independent check of issue 18), and the ratios of
throughput and inferences per joule are printed (target: within 3%).

usage: python bench/pa_trial_cost.py [-r REPO] [-m gmlp] [-c 32] [--window 5] [--max-windows 4]
       [--set instance_count=3 ...] [--energy-meter nvml] [--gpus 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner.engines.pa_install import find_perf_analyzer  # noqa: E402
from tuner.engines.perf_analyzer import input_data_document  # noqa: E402
from tuner.load import LoadSpec  # noqa: E402
from tuner.measure import InputSource, MeasureContext, MeasureSettings, load_trial, measure_loaded  # noqa: E402
from tuner.meters.select import select_meters  # noqa: E402
from tuner.model_config import load_model_config, parse_set_options  # noqa: E402
from tuner.server import LocalLauncher  # noqa: E402
from tuner.server.metrics import inference_count  # noqa: E402

DEFAULT_CONFIG = ("instance_count=3", "max_batch_size=64", "dynamic_batching=true",
                  "max_queue_delay_microseconds=200")


def without_export(server, model: str, samples, batching: bool, concurrency: int, meters, window_s: float,
                   windows: int, warmup_s: float, workdir: Path) -> list[dict[str, float]]:
    """perf_analyzer with no --profile-export-file; per window: Triton's count / s and count / J over the meters' span."""
    install = find_perf_analyzer()
    inputs = workdir / "inputs.json"
    inputs.write_text(json.dumps(input_data_document(samples, batching)))
    cmd = [str(install.binary), "-m", model, "-u", server.grpc_url, "-i", "grpc", "-b", "1", "--input-data",
           str(inputs), "--concurrency-range", str(concurrency), "--measurement-interval", "250",
           "--max-trials", "1000000", "--stability-percentage", "0.001"]
    log = open(workdir / "pa_noexport.log", "wb")
    proc = subprocess.Popen(cmd, env={**os.environ, **install.env}, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    rows = []
    try:
        time.sleep(warmup_s + 1.0)  # its own start, then the same warm-up
        for _ in range(windows):
            for meter in meters:
                meter.begin()
            t0, c0 = time.time_ns(), inference_count(server.metrics_url, model)
            time.sleep(window_s)
            t1, c1 = time.time_ns(), inference_count(server.metrics_url, model)
            readings = [meter.end() for meter in meters]
            joules = sum(sum(r.energy_j.values()) for r in readings if r.energy_j)
            count = (c1 or 0.0) - (c0 or 0.0)
            rows.append({"throughput_per_s": count / ((t1 - t0) / 1e9),
                         "inferences_per_j": count / joules if joules else float("nan")})
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-r", "--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("-m", "--model", default="mlp")
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-windows", type=int, default=4)
    parser.add_argument("--set", dest="knobs", action="append", default=None,
                        help="knob=value, added to (or overriding) the default config")
    parser.add_argument("--energy-meter", default="auto")
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    base = load_model_config(args.model_repository, args.model)
    trial = parse_set_options(DEFAULT_CONFIG + tuple(args.knobs or ()))  # --set adds to or overrides the default
    settings = MeasureSettings(warmup_s=args.warmup, window_s=args.window, max_windows=args.max_windows)
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    spec = LoadSpec(concurrency=args.concurrency, engine="perf_analyzer")
    with tempfile.TemporaryDirectory() as tmp, LocalLauncher(ready_timeout_s=180, gpus=gpus).start(
            args.model_repository, Path(tmp)) as server:
        meters = select_meters(server, args.energy_meter, None, gpus)
        ctx = MeasureContext(server, args.model, base, InputSource({}), meters, settings)
        started = time.perf_counter()
        samples = load_trial(ctx, trial)
        loaded = time.perf_counter()
        measurement = measure_loaded(ctx, trial, spec, samples)
        done = time.perf_counter()
        windows = len(measurement.windows)
        load_s, measure_s = loaded - started, done - loaded
        floor_s = load_s + args.warmup + sum(w.duration_s for w in measurement.windows)
        # The meters are closed by the measurement; the check gets fresh ones on the same server.
        meters = select_meters(server, args.energy_meter, None, gpus)
        check = without_export(server, args.model, samples, (base.max_batch_size or 0) > 0, args.concurrency,
                               meters, args.window, max(3, windows), args.warmup, Path(tmp))
        for meter in meters:
            meter.close()
    gt_tput, gt_ipj = measurement.throughput_per_s.mean, measurement.inferences_per_j.mean
    pa_tput = statistics.fmean(r["throughput_per_s"] for r in check[-3:])
    pa_ipj = statistics.fmean(r["inferences_per_j"] for r in check[-3:])
    print(f"config: {trial.describe()}; concurrency {args.concurrency}; engine perf_analyzer "
          f"({find_perf_analyzer().source}); energy {measurement.energy_source}")
    print(f"trial: model load {load_s:.1f} s + measurement {measure_s:.1f} s (warm-up {args.warmup:g} s, "
          f"{windows} windows of {args.window:g} s, stop and export) = {load_s + measure_s:.1f} s; floor "
          f"{floor_s:.1f} s; trial / floor = {(load_s + measure_s) / floor_s:.3f} (target <= 1.2)")
    print(f"greentune: {gt_tput:,.0f} infer/s, {gt_ipj:.2f} inferences/J, p99 {measurement.p99_ms.mean:.2f} ms; "
          f"perf_analyzer without export (Triton's count, same meters): {pa_tput:,.0f} infer/s, {pa_ipj:.2f} "
          f"inferences/J")
    print(f"greentune / perf_analyzer without export: throughput {gt_tput / pa_tput:.3f}, inferences/J "
          f"{gt_ipj / pa_ipj:.3f} (target within 3%)")
    if args.json:
        args.json.write_text(json.dumps({"load_s": load_s, "measure_s": measure_s, "floor_s": floor_s,
                                         "greentune": {"throughput_per_s": gt_tput, "inferences_per_j": gt_ipj},
                                         "without_export": check}, indent=1))


if __name__ == "__main__":
    main()
