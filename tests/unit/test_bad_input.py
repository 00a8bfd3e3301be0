"""Bad input never crashes: CLI values and files are accepted or rejected with one clear line (exit 2)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL_REPOSITORY
from tuner import model_config
from tuner.cli import build_load, cli, parse_gpus, parse_ports
from tuner.errors import BadInput
from tuner.inputs import parse_shape_options
from tuner.model_config import load_model_config, parse_set_options, read_model_config, write_model_config
from tuner.results import TrialConfig
from tuner.study import parse_duration

REPO = str(MODEL_REPOSITORY)
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


def accepted_or_clean_error(fn, value):
    try:
        fn(value)
    except BadInput as exc:
        message = str(exc)
        assert message and "\n" not in message and (message.startswith("--") or ":" in message)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(text, st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["instance_count", "instance_kind", "max_batch_size", "dynamic_batching", "max_queue_delay_microseconds",
     "preferred_batch_size", "bogus"]), text)), max_size=4))
def test_set_values(items):
    try:
        trial = parse_set_options(items)
    except BadInput as exc:
        assert str(exc).startswith("--set ") and "\n" not in str(exc)
        return
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    try:
        model_config.apply_trial(base, trial)
    except BadInput as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.lists(text, max_size=3))
def test_shape_values(items):
    try:
        parse_shape_options(items)
    except BadInput as exc:
        assert str(exc).startswith("--shape ")


@settings(max_examples=200, deadline=None)
@given(text)
def test_duration_gpus_ports_concurrency_values(value):
    for fn in (parse_duration, parse_gpus, parse_ports, lambda v: build_load(v, None, 30.0, allow_auto=True)):
        accepted_or_clean_error(fn, value)


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(cli, ["measure", "-r", REPO, "-m", "mlp", "-o", str(blocker / "out")])
    assert result.exit_code == 2
    assert f"--output {blocker / 'out'}: not a writable folder" in result.output


def test_port_already_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(cli, ["measure", "-r", REPO, "-m", "mlp", "--ports", f"{port},{port + 1},{port + 2}",
                                          "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"--ports: HTTP port {port} is already in use" in result.output
    bad = CliRunner().invoke(cli, ["measure", "-r", REPO, "-m", "mlp", "--ports", "80,81", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and "three distinct ports" in bad.output


def test_unreadable_model_repository_entry(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").mkdir()  # a folder where the file should be
    result = CliRunner().invoke(cli, ["measure", "-r", str(tmp_path), "-m", "m"])
    assert result.exit_code == 2 and "no m/config.pbtxt" in result.output


def test_export_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    path = tmp_path / "config.pbtxt"
    write_model_config(base, path)
    original = path.read_text()

    def broken(config):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_config, "to_text", broken)
    with pytest.raises(OSError):
        write_model_config(model_config.apply_trial(base, TrialConfig(instance_count=3)), path)
    assert path.read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt"]
    assert read_model_config(path) == base
