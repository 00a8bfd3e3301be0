"""bench/search_vs_grid.py: the ratio of a search's pick to a grid's best, and every failed or screened trial named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "search_vs_grid.py"


def fake_output(folder: Path, best_ipj: float | None, rows: list[dict]) -> Path:
    """An output folder as greentune writes it: summary.json's best and trials.csv's status columns."""
    folder.mkdir(parents=True)
    best = None if best_ipj is None else {"config": {"instance_count": 3, "dynamic_batching": True},
                                          "measurement": {"inferences_per_j": {"mean": best_ipj}}}
    (folder / "summary.json").write_text(json.dumps({"best": best}))
    pd.DataFrame(rows).to_csv(folder / "trials.csv", index=False)
    return folder


def run(*args: Path | str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout


def test_the_ratio_and_every_failed_or_screened_trial_with_its_reason(tmp_path):
    grid = fake_output(tmp_path / "grid", 80.0, [
        {"trial": 0, "status": "feasible", "inferences_per_j": 11.0},
        {"trial": 1, "status": "feasible", "inferences_per_j": 80.0}])
    search = fake_output(tmp_path / "search", 84.0, [
        {"trial": 0, "status": "feasible", "inferences_per_j": 11.0},
        {"trial": 1, "status": "screened", "inferences_per_j": 12.0, "screened_reason": "after 1 window: worse"},
        {"trial": 2, "status": "failed", "inferences_per_j": None, "failure_reason": "load tool failed: cut export"},
        {"trial": 3, "status": "feasible", "inferences_per_j": 84.0}])
    out = run(grid, search, "--search-seconds", "279")
    assert "best found / grid best: 1.050 after 4 trials in 279 s" in out
    assert "trial 1: screened: after 1 window: worse" in out
    assert "trial 2: failed: load tool failed: cut export" in out
    assert "search trials failed: 1" in out


def test_a_run_cut_before_its_first_trial_is_said_not_a_traceback(tmp_path):
    grid = fake_output(tmp_path / "grid", 80.0, [{"trial": 0, "status": "feasible", "inferences_per_j": 80.0}])
    (tmp_path / "search").mkdir()
    out = run(grid, tmp_path / "search")
    assert "no summary.json" in out and "best found / grid best" not in out
