"""A shared study in a real PostgreSQL database: a second machine (output folder) continues the first's study."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.redact import mask_url

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
    assert summary["study"]["storage"] == mask_url(URL)  # recorded with the password masked
    study = optuna.load_study(study_name="greentune-mlp", storage=URL)
    measured = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # PRUNED: screened
    assert len([t for t in study.trials if t.state in measured and "result" in t.user_attrs]) >= 3
    assert triton_processes() == []


@pytest.fixture
def secret_storage():
    """A throwaway role with a unique password and its own database; yields (url, password)."""
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(URL)
    name = f"gt_{secrets.token_hex(6)}"
    password = f"Pw{secrets.token_hex(12)}"
    dsn = f"host={admin.host} port={admin.port or 5432} dbname={admin.database} user={admin.username} password={admin.password}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT {name} TO CURRENT_USER")
        conn.execute(f"CREATE DATABASE {name} OWNER {name}")
    try:
        yield f"postgresql://{name}:{password}@{admin.host}:{admin.port or 5432}/{name}", password
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {name}")


def _files_holding(root, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_storage_password_reaches_no_output_file_nor_the_terminal(tmp_path, secret_storage, monkeypatch):
    url, password = secret_storage
    out = tmp_path / "out"
    common = ["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "2", "--idle-seconds", "0.5",
              *FAST_FLAGS, "--trials", "2", "-o", str(out)]
    run = run_cli([*common, f"--storage={url}"])
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"]["storage"].startswith(url.split(":")[0] + "://") and "***" in summary["study"]["storage"]
    assert "***" in summary["environment"]["command_line"] and "--storage" in summary["environment"]["command_line"]
    # greentune report reads the study from GREENTUNE_STORAGE, not from summary.json (where it is masked)
    monkeypatch.setenv("GREENTUNE_STORAGE", url)
    report = run_cli(["report", str(out)])
    monkeypatch.delenv("GREENTUNE_STORAGE")
    assert report.returncode == 0, report.stderr[-2000:]
    # a shared study already there: the refusal names the storage, masked
    again = run_cli([*common, "--storage", url])
    assert again.returncode == 2 and "***" in again.stderr
    # a storage that cannot be opened (wrong database): the error line names the storage, masked
    broken = run_cli([*common, "--storage", url.rsplit("/", 1)[0] + "/no_such_db", "-o", str(tmp_path / "broken")])
    assert broken.returncode == 2 and "--storage" in broken.stderr and "***" in broken.stderr
    assert [line for line in broken.stderr.splitlines() if "error:" in line] and "Traceback" not in broken.stderr
    for result in (run, report, again, broken):
        assert password not in result.stdout and password not in result.stderr
    assert (out / "report.html").exists() and (out / "trials.csv").exists() and list((out / "trials").glob("*.json"))
    assert _files_holding(tmp_path, password) == []
    assert triton_processes() == []
