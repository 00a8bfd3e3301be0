"""How much of the grid's best does greentune's search find, for what share of the grid's time?

Measures every config of a small space once (the grid), then runs greentune's default search (TPE) with
budgets of 25% and 50% of the grid size, all in one run on the real embedded Triton server, and prints,
for each budget, (best inferences per joule found) / (grid's best) and (wall time) / (grid's wall time).

usage: python bench/search_efficiency.py [--model mlp] [--concurrency 4] [--window 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = """\
version: 1
description: benchmark space (8 configs)
knobs:
  instance_count: {type: int, low: 1, high: 2}
  max_batch_size: {type: pow2, low: 8, high: 32}
  dynamic_batching: {type: bool}
  max_queue_delay_microseconds: {value: 500}
"""
GRID_SIZE = 2 * 3 * 2  # instance_count x max_batch_size (8, 16, 32) x dynamic_batching


def run_search(out: Path, space: Path, sampler: str, trials: int, args: argparse.Namespace) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "tuner", "search", "-r", str(ROOT / "model_repository"), "-m", args.model,
           "--space", str(space), "--sampler", sampler, "--trials", str(trials), "--seed", str(args.seed),
           "-c", str(args.concurrency), "--window", str(args.window), "--warmup", "1", "--idle-seconds", "1",
           "-o", str(out)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        raise SystemExit(f"search failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((out / "summary.json").read_text()), elapsed


def best_ipj(summary: dict) -> float:
    best = summary.get("best")
    return float(best["measurement"]["inferences_per_j"]["mean"]) if best else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        space = work / "space.yaml"
        space.write_text(SPACE)
        grid, grid_s = run_search(work / "grid", space, "grid", GRID_SIZE + 1, args)
        grid_best = best_ipj(grid)
        print(f"grid: {grid['trial_count']} configs measured (baseline included) in {grid_s:.0f} s; "
              f"best {grid_best:.2f} inferences/J ({', '.join(grid['energy_sources'])}), trial {grid['best']['trial']}")
        print("| budget | configs measured | best infer/J found / grid best | wall time / grid time |")
        print("|---|---|---|---|")
        for share in (0.25, 0.5):
            trials = max(2, round(share * GRID_SIZE))
            found, seconds = run_search(work / f"tpe-{share}", space, "tpe", trials, args)
            print(f"| {share:.0%} ({trials} trials) | {found['trial_count']} | {best_ipj(found) / grid_best:.3f} | "
                  f"{seconds / grid_s:.3f} |")
        print("note: single measurements carry their spread (see each summary's 95% CIs); a ratio above 1 means "
              "the search re-measured a grid config and drew a higher value within that spread.")


if __name__ == "__main__":
    main()
