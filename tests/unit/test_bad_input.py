"""Bad input never crashes: CLI values and files are accepted or rejected with one clear line (exit 2)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import MODEL_REPOSITORY
from tuner import model_config
from tuner.bench import LoadPolicy
from tuner.cli import cli
from tuner.errors import BadInput
from tuner.inputs import parse_shape_options
from tuner.job import parse_duration
from tuner.model_config import load_model_config, parse_set_options, read_model_config, write_model_config
from tuner.results import TrialConfig
from tuner.server.choose import parse_gpus, parse_ports

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
    for fn in (parse_duration, parse_gpus, parse_ports, lambda v: LoadPolicy.from_flags(v, None, 30.0, allow_auto=True)):
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


def _one_clean_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "[/x]=1"], "--set [/x]=1: unknown knob '[/x]'"),
    (["--set", "instance_count=[bold red]2[/]"], "--set instance_count=[bold red]2[/]: expected an integer"),
    (["--shape", "INPUT:100000000000"], "at most 256 MiB per request"),
    (["--shape", "[/x]:0"], "--shape [/x]:0: expected NAME:d1,d2"),
    (["--launcher", "remote", "--url", "http://127.0.0.1:99999"], "--url http://127.0.0.1:99999: bad port"),
    (["--launcher", "remote", "--url", "http://127.0.0.1:abc"], "--url http://127.0.0.1:abc: bad port"),
    (["--launcher", "remote", "--url", "http://u:Pw1234567@127.0.0.1:x"], "--url http://u:***@127.0.0.1:x: bad port"),
])
def test_hostile_flag_values_are_one_escaped_line_exit_2(tmp_path, args, expected):
    result = CliRunner().invoke(cli, ["measure", "-r", REPO, "-m", "mlp", *args, "-o", str(tmp_path)])
    assert expected in _one_clean_line(result)
    assert "Pw1234567" not in result.output


def test_markup_in_a_space_path_and_model_repository_is_printed_literally(tmp_path):
    result = CliRunner().invoke(cli, ["search", "-r", REPO, "-m", "mlp", "--space", "[/x]", "-o", str(tmp_path)])
    assert "--space [/x]: no such file" in _one_clean_line(result)
    result = CliRunner().invoke(cli, ["measure", "-r", "[/bold]", "-m", "mlp", "-o", str(tmp_path)])
    assert "[/bold]" in _one_clean_line(result)


def test_output_folder_writable_by_every_user_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = CliRunner().invoke(cli, ["measure", "-r", REPO, "-m", "mlp", "-o", str(shared)])
    assert f"--output {shared}: writable by every user (mode 777" in _one_clean_line(result)
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot replace our files
    from tuner.results import ensure_writable_dir

    assert ensure_writable_dir(shared) == shared


@pytest.mark.parametrize(("datatype", "values", "message"), [
    ("UINT8", [300, 1], "300 is out of range for UINT8 (0..255)"),
    ("INT64", [2**70, 1], "is out of range for INT64"),
    ("INT32", [1.5, 2], "1.5 is not a whole number"),
    ("INT32", [float("nan"), 2], "nan is not a whole number"),
    ("FP16", [1e6, 1], "out of range for FP16"),
    ("BOOL", [2, 0], "expected true/false or 0/1"),
    ("INT8", ["1", 2], "expected numbers for INT8"),
])
def test_input_data_values_that_would_change_are_refused(tmp_path, datatype, values, message):
    import json

    from tuner.inputs import InputSpec, load_input_data

    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"X": values}]}))
    with pytest.raises(BadInput, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")) as exc:
        load_input_data(path, [InputSpec("X", datatype, (2,))])
    assert str(exc.value).startswith(f"--input-data {path}: data[0].X: ") and "\n" not in str(exc.value)


def test_input_data_whole_floats_and_in_range_values_are_kept(tmp_path):
    import json

    import numpy as np

    from tuner.inputs import InputSpec, load_input_data

    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"X": [2.0, 255], "Y": [0.5, -1]}]}))
    (sample,) = load_input_data(path, [InputSpec("X", "UINT8", (2,)), InputSpec("Y", "FP32", (2,))])
    assert sample["X"].dtype == np.uint8 and sample["X"].tolist() == [2, 255]
    assert sample["Y"].tolist() == [0.5, -1.0]


def test_shape_with_a_huge_request_is_refused_before_any_server():
    from tuner.inputs import input_specs

    metadata = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, -1]}]}
    with pytest.raises(BadInput, match="at most 256 MiB per request"):
        input_specs(metadata, {"max_batch_size": 8}, {"X": (100_000_000,)})


@pytest.mark.parametrize("page", [
    'nv_energy_consumption{gpu_uuid="GPU-1"} not-a-number\n',
    'nv_energy_consumption{gpu_uuid="GPU-1"}\n',
    'nv_energy_consumption{gpu_uuid="GPU-1"} NaN\n',
    'nv_energy_consumption{gpu_uuid="GPU-1"} -5\n',
    "\x00\xff garbage",
    "",
])
def test_malformed_metrics_page_disables_the_cross_check(page):
    from tuner.meters.nvml import parse_triton_energy_j

    assert parse_triton_energy_j(page) is None


def test_metrics_page_sums_energy():
    from tuner.meters.nvml import parse_triton_energy_j

    page = ('# HELP nv_energy_consumption x\nnv_energy_consumption{gpu_uuid="a b"} 10.5\n'
            'nv_energy_consumption{gpu_uuid="c"} 2 1700000000\nnv_gpu_utilization{gpu_uuid="c"} 0.5\n')
    assert parse_triton_energy_j(page) == 12.5
