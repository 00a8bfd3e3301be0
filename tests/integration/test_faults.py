"""The fault suite: servers dying, configs refused, requests hanging or failing, interrupts, kills, full disks."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import psutil
import pytest
from optuna.trial import TrialState

from tests.conftest import MODEL_REPOSITORY, ROOT, triton_processes
from tests.integration.conftest import FAST_FLAGS, leaked_shm, run_cli, shm_regions
from tuner.model_config import read_model_config

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "fixtures" / "model_repository"
SEARCH = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", "--idle-seconds", "0.5",
          *FAST_FLAGS]
# The `held` fixture model: its load waits while GREENTUNE_TEST_HOLD says so, so a test knows where greentune is.
HELD_SPACE = ROOT / "tests" / "fixtures" / "held_space.yaml"
HELD_SEARCH = ["search", "-r", str(FIXTURES), "-m", "held", "--space", str(HELD_SPACE), "-c", "2",
               "--idle-seconds", "0.5", *FAST_FLAGS]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "160", **(env or {})})


def hold_after(out: Path, records: int) -> dict[str, str]:
    """Environment that holds the `held` model's next load once `records` trial records exist."""
    (out / "trials").mkdir(parents=True, exist_ok=True)
    return {"GREENTUNE_TEST_HOLD": f"{out / 'trials'}:{records}"}


def wait_held(out: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Wait until the held load is in progress (the model touched trials/held)."""
    deadline = time.monotonic() + timeout
    while not (out / "trials" / "held").exists():
        if proc.poll() is not None:
            pytest.fail(f"greentune exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the held load")
        time.sleep(0.1)


def study_trials(out: Path, model: str = "held") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=f"greentune-{model}", storage=f"sqlite:///{out / 'study.db'}")
    return study.get_trials(deepcopy=False)


def wait_records(out: Path, count: int, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "trials").glob("trial-*.json"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"greentune exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    pytest.fail("timed out waiting for trial records")


def wait_next_load(out: Path, proc: subprocess.Popen[str], model: str = "mlp", timeout: float = 240) -> None:
    """Wait until Triton logs one more load of the model than now (the next trial's config is in place)."""
    log, needle = out / "tritonserver.log", f"successfully loaded '{model}'"
    seen = log.read_text(errors="replace").count(needle)
    deadline = time.monotonic() + timeout
    while log.read_text(errors="replace").count(needle) <= seen:
        if proc.poll() is not None:
            pytest.fail(f"greentune exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the next trial's config never loaded")
        time.sleep(0.1)


def pid_files(out: Path) -> list[Path]:
    """The run's pid file (one per run: .greentune/server-<pid>-<id>.pid.json)."""
    return sorted((out / ".greentune").glob("server-*.pid.json"))


def server_pid(out: Path) -> int:
    (path,) = pid_files(out)
    return int(json.loads(path.read_text())["pgid"])


def measured_configs(out: Path) -> pd.DataFrame:
    trials = pd.read_csv(out / "trials.csv")
    return trials[["instance_count", "max_batch_size", "dynamic_batching", "max_queue_delay_microseconds"]].astype(str)


def test_server_killed_mid_search_is_restarted_and_the_search_finishes(tmp_path):
    proc = start([*SEARCH, "--trials", "4", "-o", str(tmp_path)])
    wait_records(tmp_path, 1, proc)
    first = (tmp_path / "trials" / "trial-0000.json").read_text()
    wait_next_load(tmp_path, proc)  # the next trial's config is loaded: kill the server mid-trial
    os.kill(server_pid(tmp_path), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["server_restarts"] >= 1 and summary["trial_count"] == 4
    trials = pd.read_csv(tmp_path / "trials.csv")
    died = trials[trials["failure_reason"].fillna("").str.contains("server died")]
    assert len(died) == 1 and (died["status"] == "failed").all()
    assert (tmp_path / "trials" / "trial-0000.json").read_text() == first  # finished trials kept
    assert "restarted" in stderr
    assert triton_processes() == []


def test_config_triton_refuses_fails_that_trial_with_tritons_words(tmp_path):
    space = tmp_path / "kinds.yaml"
    space.write_text("knobs:\n  instance_kind: {type: choice, choices: [KIND_GPU, KIND_CPU]}\n  instance_count: 1\n")
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", str(space), "--sampler", "grid",
                      "--trials", "5", "-c", "2", "--idle-seconds", "0.5", *FAST_FLAGS, "-o", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-3000:]
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    gpu = trials[trials["instance_kind"] == "KIND_GPU"]
    assert len(gpu) == 1 and gpu["status"].iloc[0] == "failed"
    assert "KIND_GPU but no GPUs are available" in gpu["failure_reason"].iloc[0]  # Triton's own text
    assert (trials[trials["instance_kind"] == "KIND_CPU"]["status"] == "feasible").all()  # the next one loads
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["best"]["config"]["instance_kind"] == "KIND_CPU"
    assert "grid exhausted" in summary["stop_reason"]


def test_hanging_requests_time_out_and_fail_the_measurement(tmp_path):
    # Bounded by run_cli's timeout (a hang raises TimeoutExpired), not by a wall-clock figure a busy machine misses.
    result = run_cli(["measure", "-r", str(FIXTURES), "-m", "slow", "-c", "2", "--request-timeout", "0.3",
                      "--warmup", "0", "--window", "1", "--max-windows", "3", "--idle-seconds", "0",
                      "-o", str(tmp_path)], timeout=300)
    assert result.returncode == 1, result.stderr
    assert "requests failed" in result.stderr and "Deadline Exceeded" in result.stderr
    assert "Traceback" not in result.stderr
    assert triton_processes() == []


def test_error_rate_above_the_threshold_fails_with_counts(tmp_path):
    common = ["measure", "-r", str(FIXTURES), "-m", "flaky", "-c", "2", "--idle-seconds", "0", *FAST_FLAGS]
    failing = run_cli([*common, "-o", str(tmp_path / "a")])
    assert failing.returncode == 1
    assert "requests failed (33% > 5% allowed): simulated backend failure" in failing.stderr
    tolerated = run_cli([*common, "--max-failure-rate", "0.5", "-o", str(tmp_path / "b")])
    assert tolerated.returncode == 0, tolerated.stderr
    document = json.loads((tmp_path / "b" / "measurement.json").read_text())["measurement"]
    assert document["failure_count"] > 0
    assert document["failure_rate"] == pytest.approx(1 / 3, abs=0.05)
    assert "failed" in tolerated.stdout


@pytest.mark.parametrize("case", ["during-start", "random", "during-export"])
def test_interrupts_leave_a_consistent_resumable_study(tmp_path, case):
    rng = random.Random(f"greentune-{case}")
    sig = signal.SIGTERM if case != "random" else rng.choice([signal.SIGINT, signal.SIGTERM])
    args = [*HELD_SEARCH, "--trials", "2", "-o", str(tmp_path)]
    before = shm_regions()
    # The export's load waits until the process is stopped, so the search cannot finish before the signal.
    proc = start(args, hold_after(tmp_path, 2))
    if case == "during-start":
        deadline = time.monotonic() + 60
        while not pid_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif case == "random":
        time.sleep(rng.uniform(1.0, 12.0))
    else:
        wait_held(tmp_path, proc)  # both trials recorded; greentune is loading the chosen config to export it
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    assert triton_processes() == []
    assert not leaked_shm(before)
    exported = tmp_path / "held" / "config.pbtxt"
    assert not exported.exists()  # the export never completed, and nothing half-written is left
    assert not list(tmp_path.glob("held/.config.pbtxt.*"))
    if (tmp_path / "study.db").exists():
        assert not [t.number for t in study_trials(tmp_path) if t.state == TrialState.RUNNING]
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trial_count"] == 2
    assert not measured_configs(tmp_path).duplicated().any()
    assert read_model_config(exported).name == "held"
    assert not [t.number for t in study_trials(tmp_path) if t.state == TrialState.RUNNING]


def test_sigkill_during_a_known_trial_leaves_one_failed_trial_measured_again_on_resume(tmp_path):
    args = [*HELD_SEARCH, "--trials", "3", "-o", str(tmp_path)]
    proc = start(args, hold_after(tmp_path, 1))
    try:
        wait_held(tmp_path, proc)  # trial 0 is recorded; the next trial's config is loading and held there
    finally:
        proc.kill()
        proc.wait()
    leftover = server_pid(tmp_path)
    try:
        running = [t for t in study_trials(tmp_path) if t.state == TrialState.RUNNING]
        assert len(running) == 1  # SIGKILL ran no cleanup: the held trial is still RUNNING in the study
        killed = running[0]
        assert not (tmp_path / "trials" / f"trial-{killed.number:04d}.json").exists()
        resumed = run_cli([*args, "--resume"])
    finally:
        if psutil.pid_exists(leftover):  # the resumed run stops it; this is for a test that failed before that
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leftover, signal.SIGKILL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "interrupted by an earlier run will be retried" in resumed.stderr
    trials = study_trials(tmp_path)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]
    again = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params == killed.params
             and "result" in t.user_attrs]  # PRUNED: measured, and screened
    assert len(again) == 1 and again[0].number > killed.number  # measured again, once, as a new trial
    assert (tmp_path / "trials" / f"trial-{again[0].number:04d}.json").exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trial_count"] == 3
    assert not measured_configs(tmp_path).duplicated().any()
    assert triton_processes() == []


def test_sigkilled_search_leaves_a_server_that_the_next_run_stops(tmp_path):
    args = [*SEARCH, "--trials", "2", "-o", str(tmp_path)]
    proc = start(args)
    wait_records(tmp_path, 1, proc)
    deadline = time.monotonic() + 60
    while not (tmp_path / "summary.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the summary follows the trial record; kill after both, as the report needs them
    proc.kill()
    proc.wait()
    leftover = server_pid(tmp_path)
    assert psutil.pid_exists(leftover)  # SIGKILL runs no cleanup: the server is still there
    partial = run_cli(["report", str(tmp_path)])  # reports render from what an unfinished search saved
    assert partial.returncode == 0 and (tmp_path / "report.html").exists()
    resumed = run_cli([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not psutil.pid_exists(leftover) or psutil.Process(leftover).status() == psutil.STATUS_ZOMBIE
    assert json.loads((tmp_path / "summary.json").read_text())["trial_count"] == 2
    assert triton_processes() == []


def mount_small_tmpfs(disk: Path) -> None:
    """Mount a 24 MB tmpfs at disk; skip where that is impossible, except in CI (GREENTUNE_REQUIRE_TMPFS=1) where it fails."""
    required = bool(os.environ.get("GREENTUNE_REQUIRE_TMPFS"))
    why = None
    if os.geteuid() != 0 or shutil.which("mount") is None:
        why = "needs root and mount(8) to mount a small tmpfs"
    else:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True)
        if mounted.returncode != 0:
            why = f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}"
    if why and required:
        pytest.fail(f"GREENTUNE_REQUIRE_TMPFS is set but {why}")
    if why:
        pytest.skip(why)


def test_full_disk_stops_the_search_cleanly_and_it_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_small_tmpfs(disk)
    try:
        out = disk / "out"
        args = [*SEARCH, "--trials", "3", "-o", str(out)]
        proc = start(args)
        wait_records(out, 1, proc)
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # fill the disk to the last byte
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 1, stderr[-2000:]
        # the disk fills while a trial is saved, or just after, while the summary is written: one line either way
        assert ("cannot save trial" in stderr or f"cannot write {out}" in stderr or f"cannot save to {out}" in stderr)
        assert "search stopped" in stderr and ("No space left on device" in stderr or "disk is full" in stderr
                                               or "during the commit" in stderr)
        assert "Traceback" not in stderr
        assert triton_processes() == []
        filler.unlink()
        resumed = run_cli([*args, "--resume"])
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads((out / "summary.json").read_text())["trial_count"] == 3
        assert not measured_configs(out).duplicated().any()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
