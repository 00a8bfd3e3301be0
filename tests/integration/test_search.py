"""greentune search end to end on the real embedded Triton server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.conftest import MODEL_REPOSITORY, ROOT, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import read_model_config
from tuner.objective import overlaps, ties_with
from tuner.results import TrialResult
from tuner.server import control

pytestmark = pytest.mark.integration

SEARCH = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", *FAST_FLAGS]


def test_six_trial_search_emits_a_config_triton_loads(tmp_path, server):
    result = run_cli([*SEARCH, "--trials", "6", "--max-p99-ms", "200", "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-2000:]
    exported = tmp_path / "mlp" / "config.pbtxt"
    config = read_model_config(exported)
    assert [i.name for i in config.input] == ["INPUT"] and config.backend == "python"
    control.load_config(server, "mlp", config)  # the real server accepts the exported file

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["schema_version"] == 1 and summary["status"] == "feasible"
    assert summary["trial_count"] == 6 and summary["baseline"]["trial"] == 0
    assert summary["baseline"]["config"]["max_batch_size"] == 32  # the model's own config seeds the study
    assert summary["best"]["measurement"]["energy_source"] == "estimated"
    assert summary["load"] == {"mode": "concurrency", "concurrency": 4, "engine": "builtin"}
    assert summary["constraints"]["max_p99_ms"] == 200
    assert summary["savings_vs_baseline"]["energy_per_inference_j_baseline"] > 0
    assert summary["pareto_front"] and summary["environment"]["triton_server"] != "unknown"
    best_ipj = summary["best"]["measurement"]["inferences_per_j"]["mean"]

    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 6 and trials["trial"].is_unique
    assert trials["pareto"].any() and trials.loc[trials["pareto"], "status"].eq("feasible").all()
    assert trials["inferences_per_j"].max() == pytest.approx(best_ipj)
    # no two measured trials share a config: duplicates are reused, never measured again
    knobs = trials[["instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_microseconds"]]
    assert not knobs.astype(str).duplicated().any()
    assert "best:" in result.stdout and "mJ per inference" in result.stdout
    assert triton_processes() == []


def test_impossible_constraints_exit_3_with_summary(tmp_path):
    result = run_cli([*SEARCH, "--trials", "2", "--min-throughput", "1000000", "-o", str(tmp_path)])
    assert result.returncode == 3, result.stderr[-2000:]
    assert "no feasible config" in result.stderr and "min_throughput" in result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "no_feasible_config" and summary["best"] is None
    assert summary["closest_infeasible"]["most_violated"] == "min_throughput"
    assert not (tmp_path / "mlp" / "config.pbtxt").exists()
    assert triton_processes() == []


def _wait_for_records(path, count, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(path.glob("trial-*.json"))) >= count:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.3)
    pytest.fail("search did not finish trials in time")


def _wait_for_next_load(out, proc, model="mlp", timeout=240):
    """Wait until Triton logs one more load of the model than now (the next trial's config is in place)."""
    log, needle = out / "tritonserver.log", f"successfully loaded '{model}'"
    seen = log.read_text(errors="replace").count(needle)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(needle) <= seen:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if time.monotonic() > deadline:
            pytest.fail("the next trial's config never loaded")
        time.sleep(0.1)


def test_killed_search_resumes_keeping_finished_trials(tmp_path):
    args = [*SEARCH, "--trials", "4", "--max-p99-ms", "500", "-o", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_records(tmp_path / "trials", 2, proc)
    proc.kill()  # SIGKILL: no cleanup runs; the server it started is left behind
    proc.wait()
    before = {p.name: json.loads(p.read_text()) for p in (tmp_path / "trials").glob("trial-*.json")}

    again = run_cli(args)
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently mixes into an old study

    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trial_count"] == 4
    numbers = {b["trial"] for b in [summary["best"], summary["baseline"]]}
    assert 0 in numbers or summary["baseline"]["trial"] == 0
    for name, record in before.items():  # finished trials are kept exactly as measured
        assert json.loads((tmp_path / "trials" / name).read_text()) == record
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 4
    assert triton_processes() == []  # the killed run's server was found by its pid file and stopped


def test_sigint_mid_search_then_resume_reaches_same_count(tmp_path):
    args = [*SEARCH, "--trials", "3", "--max-p99-ms", "500", "-o", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_records(tmp_path / "trials", 1, proc)
    _wait_for_next_load(tmp_path, proc)  # inside the next trial's measurement
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in stderr and "Traceback" not in stderr
    assert triton_processes() == []
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert len(trials) == 3
    knobs = trials[["instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_microseconds"]]
    assert not knobs.astype(str).duplicated().any()


def test_repeats_idle_baseline_and_dynamic_accounting(tmp_path):
    result = run_cli([*SEARCH, "--trials", "2", "--repeats", "2", "--energy-accounting", "dynamic",
                      "--idle-seconds", "1", "--no-screening", "-o", str(tmp_path)])  # both trials measured in full
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["idle_power_total_w"] > 0 and summary["energy_accounting"] == "dynamic"
    assert sorted(summary["repeated_trials"]) == [0, 1]
    best = summary["best"]["measurement"]
    assert best["repeats"] == 2 and best["inferences_per_j"]["n"] == 6  # 3 windows x 2 runs pooled
    assert best["total_energy_j"] > best["energy_j"]  # idle was subtracted from the objective's joules
    saved = summary["savings_vs_baseline"]
    assert saved["total_energy_per_inference_j_chosen"] > saved["energy_per_inference_j_chosen"]
    assert isinstance(summary["ties_with_best"], list)
    # idle x measured time came off the objective's joules, exactly (the 1% floor is far away under load)
    assert best["idle_power_w"] == pytest.approx(summary["idle_power_total_w"])
    assert best["total_energy_j"] - best["energy_j"] == pytest.approx(best["idle_power_w"] * best["duration_s"])
    assert best["energy_j"] > 0.01 * best["total_energy_j"]
    # ties and within_spread are what the saved per-trial records say, recomputed here
    records = [TrialResult.from_dict(json.loads(p.read_text())["trial"]) for p in (tmp_path / "trials").glob("*.json")]
    chosen = next(r for r in records if r.number == summary["best"]["trial"])
    base = next(r for r in records if r.number == summary["baseline"]["trial"])
    assert summary["ties_with_best"] == ties_with(chosen, records)
    assert chosen.number not in summary["ties_with_best"]
    assert saved["within_spread"] == overlaps(chosen.measurement, base.measurement)
    if base.number != chosen.number and base.feasible:
        assert (base.number in summary["ties_with_best"]) == saved["within_spread"]


def test_two_config_space_stops_exhausted_and_reuses_duplicates(tmp_path):
    space = tmp_path / "two.yaml"
    space.write_text("version: 1\nknobs:\n  instance_count: {type: choice, choices: [1, 2]}\n")
    out = tmp_path / "out"
    result = run_cli(["search", "-r", str(ROOT / "tests" / "fixtures" / "model_repository"), "-m", "held", "--space",
                      str(space), "--trials", "5", "-c", "2", "--idle-seconds", "0.5", *FAST_FLAGS, "-o", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial_count"] == 2 and "space exhausted" in summary["stop_reason"]
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials["instance_count"]) == [1, 2]  # the model's own config (1 instance) and the other one
    study = optuna.load_study(study_name="greentune-held", storage=f"sqlite:///{out / 'study.db'}")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))  # PRUNED: screened
    reused = [t for t in complete if "duplicate_of" in t.user_attrs]
    assert reused and summary["duplicate_proposals_reused"] == len(reused) == len(complete) - 2
    assert {t.user_attrs["duplicate_of"] for t in reused} <= set(trials["trial"])
    assert len(list((out / "trials").glob("trial-*.json"))) == 2  # reused proposals are never measured
    assert triton_processes() == []


def test_concurrency_auto_drives_each_config_to_its_latency_limit(tmp_path):
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "--concurrency", "auto",
                      "--max-p99-ms", "15", "--trials", "2", "--idle-seconds", "0.5", *FAST_FLAGS, "-o", str(tmp_path)])
    assert result.returncode in (0, 3), result.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["load"] == {"mode": "auto", "max_p99_ms": 15.0, "engine": "builtin"}
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert (trials["concurrency"] >= 1).all() and trials["concurrency"].max() > 1
    assert "concurrency auto (p99 <= 15.0 ms)" in result.stdout
