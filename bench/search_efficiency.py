"""How much of the grid's best does greentune's search find in a built-in space, for what share of the grid's time?

Measures every config of a small reference grid once (instance_count 1-2 x max_batch_size 8/16/32 x dynamic
batching off, or on with a queue delay of 100/400/1600 us: 24 configs, preferred sizes left unset as Triton
advises), then runs greentune's search on a built-in space (--space, sliced to the same instance_count and
max_batch_size ranges so it runs in minutes on a small machine) with --trials each (default 10), all in one run on
the real embedded Triton server: "before", the sampler alone (--no-first-trials --no-screening: TPE's random start),
and "after", the defaults (first trials that batch every request in flight, screening). Prints, per run, (best
inferences per joule found) / (grid's best), (wall time) / (grid's wall time), how many trials were screened, and
how many measured configs had dynamic batching off.

usage: python bench/search_efficiency.py [--space default] [--model mlp] [--concurrency 4] [--window 1] [--seed 0]
                                         [--seeds 0,1,2] [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = """\
version: 1
description: reference grid (24 configs)
knobs:
  instance_count: {type: int, low: 1, high: 2}
  max_batch_size: {type: pow2, low: 8, high: 32}
  dynamic_batching: {type: bool}
  max_queue_delay_microseconds: {type: choice, choices: [100, 400, 1600]}
"""
GRID_SIZE = 2 * 3 * (1 + 3)  # instance_count x max_batch_size x (off, or on with one of 3 queue delays)
SLICE = {"instance_count": (1, 2), "max_batch_size": (8, 32), "preferred_batch_size": (1, 32)}


def sliced_space(name: str) -> str:
    """The space's YAML with instance_count, max_batch_size (and pow2 preferred sizes) clipped to the grid's ranges."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "search_spaces" / f"{name}.yaml"
    document = yaml.safe_load(path.read_text())
    for knob, (low, high) in SLICE.items():
        spec = document["knobs"].get(knob)
        if isinstance(spec, dict) and "low" in spec and "high" in spec:
            spec["low"], spec["high"] = max(spec["low"], low), min(spec["high"], high)
    document["description"] = f"{document.get('description', name)} (sliced for bench/search_efficiency.py)"
    return yaml.safe_dump(document, sort_keys=False)


def run_search(out: Path, space: Path, sampler: str, trials: int, args: argparse.Namespace,
               extra: tuple[str, ...] = ()) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "tuner", "search", "-r", str(ROOT / "model_repository"), "-m", args.model,
           "--space", str(space), "--sampler", sampler, "--trials", str(trials), "--seed", str(args.seed),
           "-c", str(args.concurrency), "--window", str(args.window), "--warmup", "1", "--idle-seconds", "1",
           "-o", str(out), *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"search failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()), elapsed


def best_ipj(summary: dict) -> float:
    best = summary.get("best")
    return float(best["measurement"]["inferences_per_j"]["mean"]) if best else 0.0


def configs(out: Path) -> list[dict[str, Any]]:
    """The knobs of every measured config (from the per-trial records)."""
    return [json.loads(p.read_text())["trial"]["config"] for p in sorted((out / "trials").glob("trial-*.json"))]


def name_only(knobs: dict[str, Any]) -> bool:
    """Dynamic batching with a preferred batch size of 1 below a larger max batch: batching in name only."""
    return bool(knobs.get("dynamic_batching")) and knobs.get("preferred_batch_size") == [1] and \
        (knobs.get("max_batch_size") or 0) > 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default", help="built-in space name or a YAML path")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", default=None, help="comma-separated sampler seeds (default: --seed), one grid")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference, searched = work / "reference.yaml", work / "space.yaml"
        reference.write_text(REFERENCE)
        searched.write_text(sliced_space(args.space))
        grid, grid_s = run_search(work / "grid", reference, "grid", GRID_SIZE + 1, args, ("--no-screening",))
        grid_best = best_ipj(grid)
        print(f"grid: {grid['trial_count']} configs measured (baseline included) in {grid_s:.0f} s; "
              f"best {grid_best:.2f} inferences/J ({', '.join(grid['energy_sources'])}), trial {grid['best']['trial']}")
        print(f"searched space: {args.space} (sliced: instance_count 1-2, max_batch_size 8-32), TPE seeds "
              f"{', '.join(map(str, seeds))}, concurrency {args.concurrency}, {args.trials} trials")
        print("| search | seed | best infer/J found / grid best | wall time / grid time | screened | "
              "dynamic batching off | preferred size 1 |")
        print("|---|---|---|---|---|---|---|")
        runs = (("before: sampler alone (--no-first-trials --no-screening)", ("--no-first-trials", "--no-screening")),
                ("after: defaults (first trials, screening)", ()))
        for seed, (label, extra) in ((seed, run) for seed in seeds for run in runs):
            args.seed = seed
            out = work / f"{label.split(':')[0]}-{seed}"
            found, seconds = run_search(out, searched, "tpe", args.trials, args, extra)
            measured = configs(out)
            screened = sum(1 for p in sorted((out / "trials").glob("trial-*.json"))
                           if (json.loads(p.read_text())["trial"].get("measurement") or {}).get("screened_reason"))
            off = sum(1 for knobs in measured if not knobs.get("dynamic_batching"))
            print(f"| {label} | {seed} | {best_ipj(found) / grid_best:.3f} | {seconds / grid_s:.3f} | {screened} of "
                  f"{len(measured)} | {off} of {len(measured)} | {sum(map(name_only, measured))} of {len(measured)} |")
        print("note: single measurements carry their spread (see each summary's 95% CIs); a ratio above 1 means "
              "the search measured a config near the grid's best and drew a higher value within that spread.")


if __name__ == "__main__":
    main()
