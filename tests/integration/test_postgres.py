"""A shared study in a real PostgreSQL database: a second machine (output folder) continues the first's study."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

URL = os.environ.get("GREENTUNE_TEST_POSTGRES_URL")
if not URL:
    if os.environ.get("GREENTUNE_REQUIRE_POSTGRES"):
        raise RuntimeError("GREENTUNE_REQUIRE_POSTGRES is set but GREENTUNE_TEST_POSTGRES_URL is not")
    pytest.skip("no PostgreSQL for tests (scripts/test.sh starts one where it is installed)", allow_module_level=True)


def test_two_runs_share_one_study_through_postgres(tmp_path):
    import optuna

    try:
        optuna.delete_study(study_name="greentune-mlp", storage=URL)
    except KeyError:
        pass
    common = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4", "--idle-seconds", "0.5",
              *FAST_FLAGS, "--storage", URL]
    first = run_cli([*common, "--trials", "2", "-o", str(tmp_path / "a")])
    assert first.returncode == 0, first.stderr[-2000:]
    fresh = run_cli([*common, "--trials", "3", "-o", str(tmp_path / "b")])
    assert fresh.returncode == 2 and "--resume" in fresh.stderr  # never mixes silently into a shared study
    second = run_cli([*common, "--trials", "3", "--resume", "-o", str(tmp_path / "b")])
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["trial_count"] == 3 and summary["baseline"]["trial"] == 0  # the first run's trials, reused
    assert summary["study"]["storage"] == URL
    study = optuna.load_study(study_name="greentune-mlp", storage=URL)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) >= 3
    assert triton_processes() == []
