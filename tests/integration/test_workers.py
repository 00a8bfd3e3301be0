"""Two `greentune worker` processes, each with its own embedded CPU Triton server, on one shared study (PostgreSQL,
and a journal file): both contribute, no config is measured twice, a SIGKILLed worker's trial is retried by the
other, and the survivor's report covers every trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS
from tuner.server.process import reap_leftover
from tuner.storage import open_storage
from tuner.study import EFFECTIVE_KEY_ATTR, WORKER_ATTR

MEASURED = (TrialState.COMPLETE, TrialState.PRUNED)  # PRUNED with a result: measured, then screened
pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("GREENTUNE_TEST_POSTGRES_URL")
if os.environ.get("GREENTUNE_REQUIRE_POSTGRES") and not POSTGRES_URL:
    raise RuntimeError("GREENTUNE_REQUIRE_POSTGRES is set but GREENTUNE_TEST_POSTGRES_URL is not")

SPACE = """
knobs:
  instance_kind: KIND_CPU
  instance_count: {type: int, low: 1, high: 3}
  max_batch_size: {type: pow2, low: 8, high: 32}
"""
BUDGET = 5


def start_worker(url: str, study: str, space, output) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tuner", "worker", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", str(space),
            "-c", "4", "--idle-seconds", "0.5", *FAST_FLAGS, "--storage", url, "--study", study,
            "--trials", str(BUDGET), "--heartbeat-interval", "1", "--grace-period", "4", "-o", str(output)]
    log = open(f"{output}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "160"})


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def run_two_workers_and_kill_one(tmp_path, url: str) -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    doomed = start_worker(url, name, space, tmp_path / "a")
    wait_for(lambda: _study(url, name) is not None, 120, "the first worker to create the study")
    survivor = start_worker(url, name, space, tmp_path / "b")
    try:
        def doomed_is_measuring_its_second():
            study = _study(url, name)
            mine = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get(WORKER_ATTR, {}).get("pid") == doomed.pid]
            done = [t for t in mine if t.state in MEASURED and "result" in t.user_attrs]
            running = [t for t in mine if t.state == TrialState.RUNNING and EFFECTIVE_KEY_ATTR in t.user_attrs]
            return running[0] if done and running else None

        victim = wait_for(doomed_is_measuring_its_second, 240, "worker a to measure its second trial")
        time.sleep(1.0)  # mid-measurement
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        reap_leftover(tmp_path / "a" / ".greentune")  # its server, found by the pid file it left, never by name
        assert survivor.wait(300) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for proc in (doomed, survivor):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    log = (tmp_path / "b.log").read_text()
    study = _study(url, name)
    assert study is not None
    trials = study.get_trials(deepcopy=False)
    measured = [t for t in trials if t.state in MEASURED and "result" in t.user_attrs]
    assert len(measured) == BUDGET, log[-3000:]
    keys = [t.user_attrs[EFFECTIVE_KEY_ATTR] for t in measured]
    assert len(keys) == len(set(keys))  # no config measured twice
    pids = {t.user_attrs[WORKER_ATTR]["pid"] for t in measured}
    assert pids == {doomed.pid, survivor.pid}  # both contributed
    assert study.get_trials(deepcopy=False)[victim.number].state == TrialState.FAIL  # failed by heartbeat only
    retried = [t for t in measured if t.params == victim.params]
    assert retried and retried[0].user_attrs[WORKER_ATTR]["pid"] == survivor.pid  # the other measured it
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["trial_count"] == BUDGET  # one report over both workers' trials
    assert sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "b" / "trials").glob("trial-*.json")) == \
        sorted(t.number for t in measured)
    html = (tmp_path / "b" / "report.html").read_text()
    assert all(f'data-v="{t.number}"' in html for t in measured)
    assert "this worker measured" in log and "study budget reached (5 configs measured by all workers)" in log
    assert triton_processes() == []


def _study(url: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        return None


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL for tests (scripts/test.sh starts one where installed)")
def test_two_workers_on_one_postgres_study(tmp_path):
    assert POSTGRES_URL is not None
    run_two_workers_and_kill_one(tmp_path, POSTGRES_URL)


def test_two_workers_on_one_journal_file_study(tmp_path):
    run_two_workers_and_kill_one(tmp_path, f"journal://{tmp_path / 'study.journal'}")
