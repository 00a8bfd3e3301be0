"""No storage password in any output, given by flag or GREENTUNE_STORAGE; files that keep their mode, stay inside
their folder, and show in report.md as written (issue 21, items 3 and 6). Search and worker run on a fake bench."""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.parse
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.storages import RDBStorage

from tests.conftest import MODEL_REPOSITORY
from tests.unit.test_search_loop import BASE, TWO_CONFIGS, FakeBench, fake_measurement, make_job
from tuner import paths
from tuner.cli import cli
from tuner.errors import BadInput
from tuner.export import export_trial
from tuner.fileio import atomic_write
from tuner.job import SearchJob, SearchSettings
from tuner.model_config import apply_trial, read_model_config, to_text, write_model_config
from tuner.objective import violations
from tuner.outputs import summary_document
from tuner.provenance import command_line
from tuner.redact import forget_all, mask_url, redact
from tuner.report.data import ReportData
from tuner.report.markdown import render_markdown
from tuner.results import TrialConfig, TrialResult
from tuner.search import Search, SearchOutcome
from tuner.study import SUMMARY_ATTR

# Passwords SQLAlchemy accepts unescaped: everything after "user:" up to the first "@".
PASSWORDS = ["pa/ss", "ab#12", "ab?12"]


@pytest.fixture(autouse=True)
def _forget():
    forget_all()
    yield
    forget_all()


# --- item 3: mask_url ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg", "mysql+pymysql"])
def test_a_database_password_with_a_raw_slash_hash_or_question_mark_is_masked_whole(scheme, password):
    url = f"{scheme}://u:{password}@db:5432/x?sslmode=require&password=zz9q"
    assert mask_url(url) == f"{scheme}://u:***@db:5432/x?sslmode=require&password=***"
    assert redact(f"driver: could not connect as u:{password} (password {password!r})") == (
        "driver: could not connect as u:*** (password '***')")  # remembered for free text too


@pytest.mark.parametrize("password", [*PASSWORDS, "a@b/c"])
def test_any_other_url_is_masked_from_user_to_the_last_at(password):
    assert mask_url(f"https://user:{password}@triton.example:8000/v2") == "https://user:***@triton.example:8000/v2"
    assert mask_url(f"tcp://user:{password}@docker:2376?token=t0ken9") == "tcp://user:***@docker:2376?token=***"


def test_a_raw_at_in_a_database_password_is_masked_up_to_the_last_at():
    assert mask_url("postgresql://u:a@b/c@db/x") == "postgresql://u:***@db/x"  # SQLAlchemy's host would hold "@"
    assert "a@b/c" not in redact("error for a@b/c")


# --- item 3: search and worker, by --storage and by GREENTUNE_STORAGE ----------------------------------------------

class ExportingBench(FakeBench):
    """The search loop's fake bench, plus export (search writes the best config through it) and the command line
    in its environment record (the real bench records it when its server starts)."""

    def __init__(self) -> None:
        super().__init__()
        self.environment = {"triton_server": "fake", "command_line": command_line()}

    def export(self, config: TrialConfig, path: Path) -> Path:
        write_model_config(apply_trial(BASE, config), path)
        return path


def _storage_url(password: str) -> str:
    return f"postgresql://u:{password}Qz9@db:5432/greentune"  # Qz9: a password no plot or script holds by chance


@pytest.fixture
def fake_database(tmp_path, monkeypatch) -> list[str]:
    """Any storage URL opens one SQLite file (no PostgreSQL here); returns the URLs the study was opened with."""
    opened: list[str] = []
    database = f"sqlite:///{tmp_path / 'stands-in-for-postgres.db'}"

    def open_storage(url: str) -> RDBStorage:
        opened.append(url)
        return RDBStorage(database)

    monkeypatch.setattr("tuner.study.open_storage", open_storage)
    monkeypatch.setattr(SearchJob, "bench", lambda self, launcher, progress=None: contextlib.nullcontext(ExportingBench()))
    return opened


def _leaks(password: str) -> list[str]:
    """The forms of a password an output could hold: as given, URL-quoted, JSON-escaped."""
    return [password, urllib.parse.quote(password, safe=""), json.dumps(password)[1:-1]]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("command", ["search", "worker"])
@pytest.mark.parametrize("given", ["flag", "environment"])
def test_the_storage_password_reaches_no_output(tmp_path, fake_database, password, command, given):
    url = _storage_url(password)
    space = tmp_path / "space.yaml"
    space.write_text(TWO_CONFIGS)
    out = tmp_path / "out"
    args = [command, "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", str(space), "--trials", "2",
            "--no-first-trials", "-o", str(out), *(["--study", "s"] if command == "worker" else [])]
    if given == "flag":
        result = CliRunner().invoke(cli, [*args, "--storage", url], catch_exceptions=False)
    else:
        result = CliRunner().invoke(cli, args, env={"GREENTUNE_STORAGE": url}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert fake_database and set(fake_database) == {url}  # the study lives where the flag or the variable says
    masked = "postgresql://u:***@db:5432/greentune"
    summary = json.loads(paths.summary_path(out).read_text())
    assert summary["study"]["storage"] == masked
    line = summary["environment"]["command_line"]
    assert f"--storage {masked}" in line or f"--storage '{masked}'" in line
    written = {p: p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".png"}
    assert paths.report_paths(out)[0] in written and paths.report_paths(out)[1] in written
    for leak in _leaks(f"{password}Qz9"):
        assert leak not in result.stdout and leak not in result.stderr
        for path, text in written.items():
            assert leak not in text, path


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_storage_that_cannot_be_opened_is_one_masked_line(tmp_path, password, given):
    url = f"postgresql+psycopg://u:{password}Qz9@127.0.0.1:1/greentune"  # port 1: refused at once
    args = ["worker", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--study", "s", "-o", str(tmp_path / "out")]
    if given == "flag":
        result = CliRunner().invoke(cli, [*args, "--storage", url])
    else:
        result = CliRunner().invoke(cli, args, env={"GREENTUNE_STORAGE": url})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --storage postgresql+psycopg://u:***@127.0.0.1:1/greentune: cannot open")
    assert len(result.stderr.strip().splitlines()) == 1
    for leak in _leaks(f"{password}Qz9"):
        assert leak not in result.output


@pytest.mark.parametrize("command", ["search", "worker"])
def test_help_says_the_password_belongs_in_greentune_storage(command):
    text = " ".join(CliRunner().invoke(cli, [command, "--help"]).output.split())
    assert "Env GREENTUNE_STORAGE" in text and "ps" in text


# --- item 6a: modes ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _saved_search(folder: Path, model: object = "mlp") -> Path:
    """An output folder as a search leaves it: summary.json and the record of trial 1."""
    config = TrialConfig(instance_count=2)
    m = fake_measurement(config, 20.0)
    result = TrialResult(1, config, m, None, violations(m, make_job(folder).constraints))
    atomic_write(paths.summary_path(folder), json.dumps({"model": model, "model_config_pbtxt": to_text(BASE),
                                                         "model_repository": str(MODEL_REPOSITORY)}))
    atomic_write(paths.trial_record_path(folder, 1), json.dumps({"trial": result.to_dict()}))
    return folder


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_exported_config_keeps_the_mode_of_the_file_it_replaces(tmp_path, mode):
    deployed = tmp_path / "deploy" / "mlp" / "config.pbtxt"
    write_model_config(BASE, deployed)
    deployed.chmod(mode)
    with _umask(0o077):  # the umask would give 0600: the old file's mode wins
        export_trial(_saved_search(tmp_path / "out"), 1, deployed, None)
    assert _mode(deployed) == mode
    assert read_model_config(deployed).instance_group[0].count == 2  # rewritten, not left alone


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_new_file_gets_the_umasks_default_mode(tmp_path, umask, mode):
    with _umask(umask):
        path = export_trial(_saved_search(tmp_path / "out"), 1, None, None)
        atomic_write(tmp_path / "new.json", "{}")
    assert path == tmp_path / "out" / "mlp" / "trial-1" / "config.pbtxt"
    assert _mode(path) == mode and _mode(tmp_path / "new.json") == mode


# --- item 6b: a study's model name and repository -------------------------------------------------------------------

@pytest.mark.parametrize("model", ["../escaped", "a/b", "..", ".", "", "ABSOLUTE", None])
def test_export_refuses_a_model_name_that_is_not_one_folder_name(tmp_path, model):
    if model == "ABSOLUTE":
        model = str(tmp_path / "absolute")
    out = _saved_search(tmp_path / "out", model)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["export", str(out), "--trial", "1", "--no-verify"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {paths.summary_path(out)}: model: {model!r} is not a model name")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, inside the folder or out of it


def test_export_from_a_study_refuses_the_model_name_a_worker_wrote(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    search = Search(make_job(tmp_path / "w", space=TWO_CONFIGS), SearchSettings(trials=2, storage=url, study="s"))
    search.run(FakeBench())
    study = optuna.load_study(study_name="s", storage=url)
    document = summary_document(make_job(tmp_path / "w", space=TWO_CONFIGS),
                                SearchOutcome([], None, None, "done", url, "s"), None)
    study.set_user_attr(SUMMARY_ATTR, {**json.loads(json.dumps(document, default=str)), "model": "../../evil",
                                       "study": {"storage": None, "name": "s"}})
    result = CliRunner().invoke(cli, ["export", "--storage", url, "--study", "s", "-o", str(tmp_path / "copy"),
                                      "--trial", "0", "--no-verify"])
    assert result.exit_code == 2, result.output
    assert "'../../evil' is not a model name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path.parent / "evil").exists()  # copy/../../evil: nothing written out of the folder


class RecordingBench:
    """Stands in for tuner.bench.Bench in export: records where the server would load the model from."""

    seen: list[Path] = []

    def __init__(self, launcher, repository, model, base, output, inputs) -> None:
        RecordingBench.seen.append(Path(repository))

    def __enter__(self) -> RecordingBench:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def export(self, config: TrialConfig, path: Path) -> Path:
        write_model_config(apply_trial(BASE, config), path)
        return path


def test_a_verifying_export_from_a_study_loads_only_from_this_machines_repository(tmp_path, monkeypatch):
    monkeypatch.setattr("tuner.export.Bench", RecordingBench)
    RecordingBench.seen = []
    out = _saved_search(tmp_path / "out")  # its summary names a repository, as a study's does
    with pytest.raises(BadInput, match=r"^--verify: give --model-repository"):
        export_trial(out, 1, None, launcher=object(), from_study=True)
    assert RecordingBench.seen == []  # refused before any server
    local = tmp_path / "my-models"
    export_trial(out, 1, None, launcher=object(), model_repository=local, from_study=True)
    export_trial(out, 1, None, launcher=object(), model_repository=local)
    assert RecordingBench.seen == [local, local]


# --- item 6c: report.md --------------------------------------------------------------------------------------------

HOSTILE = "x|y <script>alert(1)</script> `code` [link](https://evil.example)\n| injected | row |"


def _hostile_report(tmp_path) -> str:
    """Trial 0 the best; trial 1 feasible with a config value, trial 2 failed with a config value and a reason, both
    hostile (a shared study's records hold whatever a worker wrote)."""
    job = make_job(tmp_path)
    best, hostile = TrialConfig(instance_count=1), TrialConfig(instance_count=2, instance_kind=f"KIND_CPU{HOSTILE}")
    m0, m1 = fake_measurement(best, 30.0), fake_measurement(hostile, 20.0)
    results = [TrialResult(0, best, m0, None, violations(m0, job.constraints)),
               TrialResult(1, hostile, m1, None, violations(m1, job.constraints)),
               TrialResult(2, hostile, None, f"Triton refused: {HOSTILE}", violations(None, job.constraints))]
    outcome = SearchOutcome(results=results, baseline=results[0], best=results[0], stop_reason="trial budget reached",
                            storage_url="", study_name="greentune-mlp",
                            environment={"command_line": f"greentune search --set '{HOSTILE}'"})
    summary = json.loads(json.dumps(summary_document(job, outcome, None), default=str))
    return render_markdown(ReportData(tmp_path, summary, results), None)


def test_report_md_shows_hostile_values_as_written_without_markup(tmp_path):
    md = _hostile_report(tmp_path)
    assert "<script" not in md and "&lt;script>alert(1)&lt;/script>" in md
    assert "](https://evil.example)" in md and "[link]" not in md  # \[link\]: not a link
    assert "`code`" not in md and "\\`code\\`" in md
    assert "\n| injected | row |" not in md  # the newline did not start a row
    tables = _tables(md)
    assert tables and all(len({_columns(row) for row in table}) == 1 for table in tables), tables
    (command,) = [line for line in md.splitlines() if line.startswith("<sub>")]
    assert command.endswith("</sub>") and "x\\|y &lt;script>" in command


def _tables(md: str) -> list[list[str]]:
    tables: list[list[str]] = []
    current: list[str] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def _columns(row: str) -> int:
    """Cells in a Markdown table row: pipes that are not escaped (an even run of backslashes escapes nothing)."""
    return len(re.findall(r"(?<!\\)(?:\\\\)*\|", row))


def test_report_md_fences_a_diff_that_holds_backticks(tmp_path):
    job = make_job(tmp_path)
    base = BASE.__class__()
    base.CopyFrom(BASE)
    base.backend = "python```\n<script>"  # a study's model_config_pbtxt: any worker can write it
    config = TrialConfig(instance_count=3)
    m = fake_measurement(config, 30.0)
    results = [TrialResult(0, config, m, None, violations(m, job.constraints))]
    outcome = SearchOutcome(results=results, baseline=None, best=results[0], stop_reason="done", storage_url="",
                            study_name="s")
    summary = json.loads(json.dumps(summary_document(job, outcome, None), default=str))
    summary["model_config_pbtxt"] = to_text(base)
    md = render_markdown(ReportData(tmp_path, summary, results), None)
    assert "````diff" in md
    body = md.split("````diff\n", 1)[1]
    assert body.index("\n````") > body.index("```")  # the diff's own ``` does not close the fence
