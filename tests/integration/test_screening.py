"""Screening on the real embedded Triton server: a trial stopped early is labelled in every output, and with an engine
that reports latencies only at exit, Little's law stands in for p99 while it runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureContext, MeasureSettings, load_trial, measure_loaded
from tuner.meters.select import select_meters
from tuner.model_config import load_model_config
from tuner.objective import Constraints
from tuner.results import TrialConfig
from tuner.screening import ScreenWindow, constraint_breach

pytestmark = pytest.mark.integration


def test_a_trial_over_the_memory_limit_is_screened_after_one_window_and_labelled_everywhere(tmp_path):
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", *FAST_FLAGS,
                      "--idle-seconds", "0", "--trials", "2", "--max-memory-mb", "1", "-o", str(tmp_path)])
    assert result.returncode == 3, result.stderr[-2000:]  # nothing fits in 1 MB
    assert "Traceback" not in result.stderr
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert list(trials["status"]) == ["infeasible", "screened"]  # the baseline is measured in full, never screened
    reason = trials["screened_reason"].iloc[1]
    assert reason.startswith("after 1 window: memory ") and reason.endswith(" MB over --max-memory-mb 1 MB")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["screened_trial_count"] == 1 and summary["screened_trials"][0]["reason"] == reason
    record = json.loads((tmp_path / "trials" / "trial-0001.json").read_text())["trial"]
    assert record["screened_reason"] == reason and len(record["measurement"]["windows"]) == 1
    assert record["measurement"]["success_count"] > 0  # the partial window is summarized, not thrown away
    assert "screened" in (tmp_path / "report.html").read_text() and reason in (tmp_path / "report.md").read_text()
    assert "trial   1 screened   " in result.stderr and "after 1 window: memory" in result.stderr
    assert triton_processes() == []


def test_littles_law_screens_a_closed_loop_whose_tool_reports_latency_only_at_exit(server):
    from tuner.engines.pa_install import find_perf_analyzer

    try:
        find_perf_analyzer()
    except Exception as exc:  # scripts/test.sh fetches it (greentune doctor --fetch), so CI never skips
        pytest.skip(f"perf_analyzer not fetched: {exc}")
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    settings = MeasureSettings(warmup_s=0.5, window_s=1.0, max_windows=6, stability_tolerance=0.25)
    ctx = MeasureContext(server, "mlp", base, InputSource({}), select_meters(server), settings)
    trial = TrialConfig(instance_count=1)
    samples = load_trial(ctx, trial)
    seen: list[tuple[ScreenWindow, ...]] = []

    def screen(windows):
        seen.append(tuple(windows))
        return constraint_breach(windows, Constraints(max_p99_ms=0.01))  # no request takes under 20 us

    m = measure_loaded(ctx, trial, LoadSpec(concurrency=4, engine="perf_analyzer"), samples, screen)
    window = seen[0][0]
    assert window.p99_ms is None and window.inferences and window.littles_latency_ms > 0.02
    assert m.screened_reason is not None and m.screened_reason.startswith(
        "after 1 window: mean latency by Little's law (4 in flight / ")
    assert len(seen) == 1 and len(m.windows) == 1  # stopped there; the export, read at exit, gives the real p99
    assert m.success_count > 0 and m.p99_ms.mean > 0.02
