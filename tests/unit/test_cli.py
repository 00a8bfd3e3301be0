"""CLI contract without a server: bad input is one line on stderr and exit 2; every command is documented."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tests.conftest import MODEL_REPOSITORY
from tuner.cli import cli

REPO = str(MODEL_REPOSITORY)


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["measure", "-r", "/nonexistent", "-m", "mlp"], "--model-repository /nonexistent: not a directory"),
        (["measure", "-r", REPO, "-m", "resnet"], "--model resnet: no resnet/config.pbtxt"),
        (["measure", "-r", REPO, "-m", "mlp", "--set", "instance_count=zero"], "--set instance_count=zero: expected an integer"),
        (["measure", "-r", REPO, "-m", "mlp_nobatch", "--set", "dynamic_batching=true"], "max_batch_size: 0"),
        (["measure", "-r", REPO, "-m", "mlp", "--concurrency", "auto"], "--concurrency auto is only for search"),
        (["measure", "-r", REPO, "-m", "mlp", "--concurrency", "4", "--request-rate", "10"],
         "exactly one of --concurrency and --request-rate"),
        (["measure", "-r", REPO, "-m", "mlp", "--url", "http://x:8000"], "--url is only used with --launcher remote"),
        (["measure", "-r", REPO, "-m", "mlp", "--launcher", "remote"], "--launcher remote needs --url"),
        (["measure", "-r", REPO, "-m", "mlp", "--window", "0"], "--window: expected positive seconds"),
        (["search", "-r", REPO, "-m", "mlp", "--concurrency", "auto"], "--concurrency auto needs --max-p99-ms"),
        (["search", "-r", REPO, "-m", "mlp", "--space", "nope"], "--space nope: no such file"),
        (["search", "-r", REPO, "-m", "mlp", "--timeout", "soon"], "--timeout soon: expected a duration"),
        (["search", "-r", REPO, "-m", "mlp", "--trials", "0"], "--trials: expected 1 to 10000"),
        (["search", "-r", REPO, "-m", "mlp", "--max-p99-ms", "-3"], "--max-p99-ms: expected a positive number"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message):
    result = invoke(args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_space_file_names_file_and_key(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  instance_count: {type: int, low: 3, high: 1}\n")
    result = invoke(["search", "-r", REPO, "-m", "mlp", "--space", str(space)])
    assert result.exit_code == 2
    assert f"{space}: knobs.instance_count: empty range" in result.output


def test_malformed_model_config(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.pbtxt").write_text("max_batch_size: {\n")
    result = invoke(["measure", "-r", str(tmp_path), "-m", "m"])
    assert result.exit_code == 2 and "config.pbtxt:" in result.output


def test_every_command_is_documented_with_an_example():
    for name, command in cli.commands.items():
        assert command.help and "Example" in command.help, name
        result = invoke([name, "--help"])
        assert result.exit_code == 0
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                pytest.fail(f"{name} --{param.name} has no help")


def test_readme_mentions_every_command():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in cli.commands:
        assert f"greentune {name}" in readme


def test_a_screened_trial_is_one_line_saying_after_how_many_windows_and_why_with_units():
    from rich.console import Console

    from tests.unit.test_screening import measurement_of
    from tuner.events import TrialRetried
    from tuner.results import TrialConfig, TrialResult, Window
    from tuner.terminal import event_text, trial_line

    def plain(markup: str) -> str:
        console = Console(width=400, record=True, color_system=None)
        console.print(markup, highlight=False)
        return console.export_text().rstrip("\n")

    config = TrialConfig(instance_count=2)
    why = ("after 1 window: 8.80 infer/J + 3 sd of trial 0's windows (0.20) = 9.40, below trial 0's 95% CI lower "
           "bound 9.50 infer/J")
    windows = [Window(1.0, 100, 0, 100.0, 4.0, 6.0, 8.0, 100.0 / 8.8, 120.0)]
    screened = TrialResult(3, config, measurement_of(config, windows, why), None, {"failed": 0.0})
    assert plain(trial_line(screened)) == f"trial   3 screened   instance_count=2 · {why}"
    lost = TrialResult(4, config, None, "load tool failed: perf_analyzer stalled", failure_kind="tool")
    assert plain(trial_line(lost)) == ("trial   4 failed (load tool, twice) instance_count=2 · load tool failed: "
                                       "perf_analyzer stalled")
    refused = TrialResult(5, config, None, "Triton refused")
    assert plain(trial_line(refused)) == "trial   5 failed    instance_count=2 · Triton refused"
    assert event_text(TrialRetried(4, "load tool failed: perf_analyzer stalled")) == (
        "trial 4: load tool failed: perf_analyzer stalled; measuring it once more (a failure of the tool, not the config)")
