"""--objective throughput end to end on the real embedded Triton server: the study's value, the export, both picks."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import apply_trial, load_model_config, read_model_config, trial_of
from tuner.results import TrialConfig

pytestmark = pytest.mark.integration

SEARCH = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", "--max-p99-ms", "200",
          *FAST_FLAGS]


def test_throughput_objective_exports_the_fastest_and_reports_both_picks(tmp_path):
    result = run_cli([*SEARCH, "--trials", "4", "--objective", "throughput", "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["objective"] == "throughput"
    picks = summary["picks"]
    assert summary["best"]["trial"] == picks["fastest"]["trial"]

    trials = pd.read_csv(tmp_path / "trials.csv")
    feasible = trials[trials["status"] == "feasible"]
    fastest_tput = summary["best"]["measurement"]["throughput_per_s"]["mean"]
    assert fastest_tput == pytest.approx(feasible["throughput_per_s"].max())
    assert picks["most_efficient"]["measurement"]["inferences_per_j"]["mean"] == pytest.approx(
        feasible["inferences_per_j"].max())
    price = picks["price_of_speed"]
    assert price["fastest_trial"] == picks["fastest"]["trial"] and price["energy_source"] == "estimated"
    assert price["same_config"] == (picks["fastest"]["trial"] == picks["most_efficient"]["trial"])

    # the Optuna study's value is the objective: inferences per second
    study = optuna.load_study(study_name=summary["study"]["name"], storage=summary["study"]["storage"])
    assert study.best_value == pytest.approx(fastest_tput)

    # the exported config.pbtxt is the fastest pick's config
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    exported = trial_of(read_model_config(tmp_path / "mlp" / "config.pbtxt"))
    chosen = TrialConfig.from_knobs(summary["best"]["config"])
    assert exported.key() == trial_of(apply_trial(base, chosen)).key()

    for report in ("report.md", "report.html"):
        text = (tmp_path / report).read_text()
        assert "Most efficient vs fastest feasible config" in text
        assert ("Same config" in text) if price["same_config"] else ("mJ per inference and" in text)
    assert "(fastest, --objective throughput)" in result.stdout and "best:" in result.stdout
    assert "price of speed" in result.stdout or "the same config" in result.stdout

    resumed = run_cli([*SEARCH, "--trials", "5", "--objective", "efficiency", "--resume", "-o", str(tmp_path)])
    assert resumed.returncode == 2 and "different objective" in resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert triton_processes() == []
