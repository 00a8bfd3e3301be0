"""Does greentune's built-in load engine keep up with perf_analyzer? Same server, same config, same inputs.

One run, one embedded Triton server, one config loaded once; at each concurrency both engines measure it with the
same windows and meters (in alternating order), and the ratios built-in / perf_analyzer of
throughput, p99 and inferences per joule are printed. Target: throughput >= 0.9x, p99 within 25%.

usage: python bench/loadgen.py [--model mlp] [--concurrency 4,16,32,64] [--window 2] [--set instance_count=2 ...]
       [--energy-meter auto|nvml|rapl|estimate] [--workers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tuner.engines.pa_install import find_perf_analyzer  # noqa: E402
from tuner.errors import GreentuneError, LoadToolError  # noqa: E402
from tuner.inputs import Sample  # noqa: E402
from tuner.load import LoadSpec  # noqa: E402
from tuner.measure import InputSource, MeasureContext, MeasureSettings, load_trial, measure_loaded  # noqa: E402
from tuner.meters.select import select_meters  # noqa: E402
from tuner.model_config import load_model_config, parse_set_options  # noqa: E402
from tuner.results import Measurement, TrialConfig  # noqa: E402
from tuner.server import LocalLauncher, control  # noqa: E402

DEFAULT_CONFIG = ("instance_count=2", "dynamic_batching=true", "max_queue_delay_microseconds=1000",
                  "max_batch_size=16")


def main() -> None:
    try:
        run()
    except GreentuneError as exc:  # one line, as greentune itself says it
        sys.exit(f"error: {exc}")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", default="4,16,32,64")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-windows", type=int, default=5)
    parser.add_argument("--set", dest="knobs", action="append", default=None, help="config knob (default: 2 "
                        "instances, dynamic batching 1 ms, max batch 16)")
    parser.add_argument("--energy-meter", default="auto")
    parser.add_argument("--gpus", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    base = load_model_config(args.model_repository, args.model)
    trial = parse_set_options(tuple(args.knobs or DEFAULT_CONFIG))
    settings = MeasureSettings(warmup_s=args.warmup, window_s=args.window, max_windows=args.max_windows,
                               stability_tolerance=0.15)
    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else None
    find_perf_analyzer(allow_fetch=True)  # a fresh clone: fetched once (pinned, hash-checked), as `doctor --fetch` does
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalLauncher(ready_timeout_s=180, gpus=gpus).start(
            args.model_repository, Path(tmp)) as server:
        meters = select_meters(server, args.energy_meter, None, gpus)
        ctx = MeasureContext(server, args.model, base, InputSource({}), meters, settings)
        samples = load_trial(ctx, trial)
        version = control.server_version(server)
        for concurrency in concurrencies:
            row: dict[str, object] = {"concurrency": concurrency}
            order = ("perf_analyzer", "builtin") if len(rows) % 2 == 0 else ("builtin", "perf_analyzer")
            for engine in order:  # alternated, so a drift of the shared machine does not favour one engine
                m = _measure(ctx, trial, LoadSpec(concurrency=concurrency, engine=engine), samples)
                row[engine] = {"throughput_per_s": m.throughput_per_s.mean, "p99_ms": m.p99_ms.mean,
                               "inferences_per_j": m.inferences_per_j.mean, "energy_source": m.energy_source,
                               "stable": m.stable, "windows": len(m.windows), "warnings": list(m.warnings)}
            rows.append(row)
            _print_row(row)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, Triton {version}"
    print(f"\nconfig: {trial.describe()}; model {args.model}; {machine}; windows {args.window:g} s")
    print("| concurrency | perf_analyzer infer/s | built-in infer/s | throughput ratio | perf_analyzer p99 ms | "
          "built-in p99 ms | p99 ratio | inferences/J ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        pa, bi = row["perf_analyzer"], row["builtin"]
        assert isinstance(pa, dict) and isinstance(bi, dict)
        print(f"| {row['concurrency']} | {pa['throughput_per_s']:.0f} | {bi['throughput_per_s']:.0f} | "
              f"{bi['throughput_per_s'] / pa['throughput_per_s']:.3f} | {pa['p99_ms']:.2f} | {bi['p99_ms']:.2f} | "
              f"{bi['p99_ms'] / pa['p99_ms']:.3f} | {bi['inferences_per_j'] / pa['inferences_per_j']:.3f} |")
    print(f"energy: {rows[0]['builtin']['energy_source'] if rows else '-'}")  # type: ignore[index]
    if args.json:
        args.json.write_text(json.dumps({"config": trial.describe(), "machine": machine, "rows": rows}, indent=1))


def _measure(ctx: MeasureContext, trial: TrialConfig, load: LoadSpec, samples: list[Sample]) -> Measurement:
    """One measurement; a failure of the load tool (not of the config) is measured once more, as the search does."""
    try:
        return measure_loaded(ctx, trial, load, samples)
    except LoadToolError as exc:
        print(f"{load.engine} at concurrency {load.concurrency}: {exc}; measuring once more", flush=True)
        return measure_loaded(ctx, trial, load, samples)


def _print_row(row: dict[str, object]) -> None:
    pa, bi = row["perf_analyzer"], row["builtin"]
    assert isinstance(pa, dict) and isinstance(bi, dict)
    print(f"concurrency {row['concurrency']}: perf_analyzer {pa['throughput_per_s']:.0f} infer/s p99 "
          f"{pa['p99_ms']:.2f} ms {pa['inferences_per_j']:.1f} infer/J | built-in {bi['throughput_per_s']:.0f} "
          f"infer/s p99 {bi['p99_ms']:.2f} ms {bi['inferences_per_j']:.1f} infer/J "
          f"[{bi['energy_source']}]", flush=True)


if __name__ == "__main__":
    main()
