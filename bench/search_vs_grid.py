"""Best found by a search / best of a grid, from two greentune output folders measured on the same machine.

usage: python bench/search_vs_grid.py GRID_OUT SEARCH_OUT [--search-seconds S] [--grid-seconds S]
Prints the grid's configs (inferences per joule, throughput, p99, status), the search's trials, the ratio of the
search's pick to the grid's best (both read from their summary.json 'best', the feasible config each exported),
and every failed or screened trial with its reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def best_of(out: Path) -> tuple[float | None, str]:
    """(inferences per joule of the exported pick, its config) from OUT/summary.json."""
    if not (out / "summary.json").exists():
        return None, "no summary.json (the run did not finish a trial)"
    summary = json.loads((out / "summary.json").read_text())
    best = summary.get("best")
    if not best:
        return None, "no feasible config"
    config = " ".join(f"{k}={v}" for k, v in best["config"].items() if k != "instance_kind")
    return float(best["measurement"]["inferences_per_j"]["mean"]), config


def table(out: Path) -> pd.DataFrame:
    """trials.csv with the columns that matter here (status, and screened where the search screened)."""
    frame = pd.read_csv(out / "trials.csv")
    columns = [c for c in ("trial", "instance_count", "max_batch_size", "dynamic_batching",
                           "max_queue_delay_microseconds", "preferred_batch_size", "status", "screened",
                           "inferences_per_j", "inferences_per_j_ci95", "throughput_per_s", "p99_ms", "memory_mb",
                           "load_engine", "energy_source") if c in frame.columns]
    return frame[columns]


def problems(out: Path) -> list[str]:
    """One line per failed or screened trial, with its reason."""
    if not (out / "trials.csv").exists():
        return []
    frame = pd.read_csv(out / "trials.csv")
    lines = []
    for _, row in frame.iterrows():
        status = str(row.get("status", ""))
        if status not in ("feasible", "infeasible"):
            reason = row.get("screened_reason") if "screened" in status else row.get("failure_reason")
            lines.append(f"trial {row['trial']}: {status}: {reason}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path)
    parser.add_argument("search", type=Path)
    parser.add_argument("--grid-seconds", type=float)
    parser.add_argument("--search-seconds", type=float)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    for name, out in (("grid", args.grid), ("search", args.search)):
        print(f"## {name}: {out}")
        if not (out / "trials.csv").exists():
            print("  no trials.csv")
            continue
        print(table(out).to_string(index=False))
        for line in problems(out):
            print("  " + line)
    grid_best, grid_config = best_of(args.grid)
    found, found_config = best_of(args.search)
    search_trials = len(pd.read_csv(args.search / "trials.csv")) if (args.search / "trials.csv").exists() else 0
    print(f"grid best: {grid_best} inferences/J ({grid_config}); search's pick: {found} inferences/J ({found_config})")
    if grid_best and found:
        print(f"best found / grid best: {found / grid_best:.3f} after {search_trials} trials"
              + (f" in {args.search_seconds:.0f} s" if args.search_seconds else "")
              + (f" (grid: {args.grid_seconds:.0f} s)" if args.grid_seconds else ""))
    failed = sum(1 for line in problems(args.search) if ": failed" in line)
    print(f"search trials failed: {failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
