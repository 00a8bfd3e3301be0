"""Secrets in URL-valued flags are masked where recorded and scrubbed from messages."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from tuner.provenance import command_line
from tuner.redact import forget_all, mask_url, redact


@pytest.fixture(autouse=True)
def _clean():
    forget_all()
    yield
    forget_all()


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://u:S3cretPw@db:5432/g", "postgresql://u:***@db:5432/g"),
    ("postgresql+psycopg://u:p%40ss:w0rd@h/db?sslmode=require&password=zzz9",
     "postgresql+psycopg://u:***@h/db?sslmode=require&password=***"),
    ("tcp://docker:2376?token=abcd1234", "tcp://docker:2376?token=***"),
    ("https://user:tok3n@triton.example:8000", "https://user:***@triton.example:8000"),
    ("unix:///run/podman.sock", "unix:///run/podman.sock"),
    ("sqlite:////tmp/out/study.db", "sqlite:////tmp/out/study.db"),
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_redact_scrubs_remembered_secrets_in_every_form_and_any_url_password():
    mask_url("postgresql://u:p@ss\"w0rd@h/db")
    assert "p@ss" not in redact('driver said: password "p@ss\\"w0rd" rejected')  # JSON-escaped form
    assert redact("failed: p@ss\"w0rd") == "failed: ***"
    assert redact("see mysql://root:hunter22@db/x") == "see mysql://root:***@db/x"
    assert redact("nothing secret here") == "nothing secret here"


def test_command_line_is_rebuilt_from_parsed_options_with_urls_masked(monkeypatch):
    seen = {}

    @click.command()
    @click.argument("folder")
    @click.option("--storage", default=None)
    @click.option("--docker-host", default=None, envvar="DOCKER_HOST")
    @click.option("--trials", type=int, default=12)
    @click.option("--resume", is_flag=True)
    @click.option("--verify/--no-verify", default=True)
    def search(**_: object) -> None:
        seen["line"] = command_line()

    monkeypatch.setenv("DOCKER_HOST", "tcp://h:2376?token=T0kenValue")
    result = CliRunner().invoke(search, ["out dir", "--storage=postgresql://u:TopSecret9@h/db", "--trials", "3",
                                         "--resume", "--no-verify"])
    assert result.exit_code == 0, result.output
    line = seen["line"]
    assert "TopSecret9" not in line and "T0kenValue" not in line
    assert "--storage 'postgresql://u:***@h/db'" in line and "--docker-host 'tcp://h:2376?token=***'" in line
    assert "'out dir'" in line and "--trials 3" in line and "--resume" in line and "--no-verify" in line
    assert json.dumps(line)  # recordable


def test_failure_reason_is_scrubbed_when_recorded():
    from tuner.results import TrialConfig, TrialResult

    mask_url("postgresql://u:VerySecret1@h/db")
    result = TrialResult(1, TrialConfig(instance_count=1), None, failure_reason="storage VerySecret1 refused")
    assert result.to_dict()["failure_reason"] == "storage *** refused"
