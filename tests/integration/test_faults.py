"""The fault suite: servers dying, configs refused, requests hanging or failing, interrupts, kills, full disks."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.conftest import MODEL_REPOSITORY, ROOT, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli, shm_regions
from tuner.model_config import read_model_config

pytestmark = pytest.mark.integration

FIXTURES = ROOT / "tests" / "fixtures" / "model_repository"
SEARCH = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", "--idle-seconds", "0.5",
          *FAST_FLAGS]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tuner", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "160"})


def wait_records(out: Path, count: int, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((out / "trials").glob("trial-*.json"))) >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"greentune exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    pytest.fail("timed out waiting for trial records")


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
    time.sleep(1.0)
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
    started = time.monotonic()
    result = run_cli(["measure", "-r", str(FIXTURES), "-m", "slow", "-c", "2", "--request-timeout", "0.3",
                      "--warmup", "0", "--window", "1", "--max-windows", "3", "--idle-seconds", "0",
                      "-o", str(tmp_path)], timeout=120)
    assert time.monotonic() - started < 90  # bounded: the load generator never waits forever
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
    args = [*SEARCH, "--trials", "2", "-o", str(tmp_path)]
    before = shm_regions()
    proc = start(args)
    if case == "during-start":
        deadline = time.monotonic() + 60
        while not pid_files(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
    elif case == "random":
        time.sleep(rng.uniform(1.0, 12.0))
    else:
        wait_records(tmp_path, 2, proc)  # both trials done: greentune is exporting the chosen config now
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), stderr[-2000:]  # 0 only if the search had already finished
    assert "Traceback" not in stderr
    assert triton_processes() == []
    assert shm_regions() <= before
    exported = tmp_path / "mlp" / "config.pbtxt"
    if exported.exists():
        read_model_config(exported)  # never half-written
    resumed = run_cli([*args, "--resume"]) if proc.returncode == 130 else None
    if resumed is not None:
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trial_count"] == 2
    assert not measured_configs(tmp_path).duplicated().any()
    read_model_config(exported)


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


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs")
def test_full_disk_stops_the_search_cleanly_and_it_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
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
        assert "cannot save trial" in stderr and "search stopped" in stderr
        assert "Traceback" not in stderr
        assert triton_processes() == []
        filler.unlink()
        resumed = run_cli([*args, "--resume"])
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert json.loads((out / "summary.json").read_text())["trial_count"] == 3
        assert not measured_configs(out).duplicated().any()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
