"""greentune measure against the real embedded Triton server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, leaked_shm, run_cli, shm_regions
from tuner.errors import ModelLoadError, ServerDied
from tuner.events import WindowMeasured
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureContext, MeasureSettings, measure_trial
from tuner.meters.select import select_meters
from tuner.model_config import load_model_config
from tuner.results import TrialConfig
from tuner.server import LocalLauncher, control

pytestmark = pytest.mark.integration

FAST = MeasureSettings(warmup_s=0.5, window_s=1.0, max_windows=6, stability_tolerance=0.25)


def test_two_configs_give_different_throughput(server):
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    meters = select_meters(server)
    load = LoadSpec(concurrency=4)
    inputs = InputSource({})
    ctx = MeasureContext(server, "mlp", base, inputs, meters, FAST)
    fast = measure_trial(ctx, TrialConfig(instance_count=1, dynamic_batching=False), load)
    # A 50 ms queue delay waiting for a batch of 32 that 4 clients can never fill: a real, large slowdown.
    slow = measure_trial(ctx, TrialConfig(dynamic_batching=True, max_queue_delay_microseconds=50_000,
                                          preferred_batch_size=(32,)), load)
    assert fast.failure_count == 0 and slow.failure_count == 0
    assert fast.throughput_per_s.mean > 5 * slow.throughput_per_s.mean
    assert slow.p50_ms > 40
    for m in (fast, slow):
        assert m.energy_source == "estimated" and m.energy_j and m.energy_j > 0
        assert m.memory_mb and m.memory_mb > 20
        assert m.inferences_per_j.n == len(m.windows) == 3


def test_non_batching_model_with_shape(server):
    base = load_model_config(MODEL_REPOSITORY, "mlp_nobatch")
    m = measure_trial(MeasureContext(server, "mlp_nobatch", base, InputSource({"INPUT": (4, 256)}),
                                     select_meters(server), FAST), TrialConfig(instance_count=2), LoadSpec(concurrency=2))
    assert m.success_count > 0 and m.failure_count == 0


def test_config_triton_rejects_is_a_load_error(server):
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    bad = type(base)()
    bad.CopyFrom(base)
    bad.input[0].dims[0] = -7  # Triton refuses negative dims other than -1
    with pytest.raises(ModelLoadError, match="Triton refused to load mlp"):
        control.load_config(server, "mlp", bad)


def test_cli_measure_prints_table_and_writes_json(tmp_path):
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--set", "instance_count=2",
                      "--set", "max_batch_size=16", "--set", "dynamic_batching=true", "--concurrency", "4",
                      "-o", str(tmp_path), *FAST_FLAGS])
    assert result.returncode == 0, result.stderr
    for text in ("throughput", "infer/s", "p99", "ms", "inferences per joule", "infer/J", "estimated",
                 "server memory", "MB", "(95% CI, n=3)", "idle power", " W"):
        assert text in result.stdout
    document = json.loads((tmp_path / "measurement.json").read_text())
    assert document["schema_version"] == 1
    assert document["measurement"]["config"] == {"instance_count": 2, "max_batch_size": 16, "dynamic_batching": True}
    assert document["measurement"]["energy_source"] == "estimated"
    assert "Started GRPCInferenceService" in (tmp_path / "tritonserver.log").read_text()
    assert triton_processes() == []


def test_cli_bad_knob_is_exit_2_without_traceback(tmp_path):
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp_nobatch", "--set", "max_batch_size=8",
                      "-o", str(tmp_path)])
    assert result.returncode == 2
    assert "max_batch_size: 0" in result.stderr and "Traceback" not in result.stderr


def test_ctrl_c_during_measurement_stops_everything(tmp_path):
    before = shm_regions()
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp",
                             "-c", "4", "--window", "5", "--max-windows", "10", "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("triton_python_backend_stub" in p for p in triton_processes()):
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert triton_processes() == []
    assert not leaked_shm(before)


def test_server_killed_mid_measurement_is_detected_and_cleaned(tmp_path):
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    before = shm_regions()
    with pytest.raises(ServerDied):
        with LocalLauncher().start(MODEL_REPOSITORY, tmp_path) as own:
            def kill_on_window(event):
                if isinstance(event, WindowMeasured):
                    os.kill(own.pid, signal.SIGKILL)

            measure_trial(MeasureContext(own, "mlp", base, InputSource({}), select_meters(own),
                                         MeasureSettings(warmup_s=0.2, window_s=1.0, max_windows=10,
                                                         stability_tolerance=0.01), kill_on_window),
                          TrialConfig(), LoadSpec(concurrency=2))
    assert triton_processes() == []
    assert not leaked_shm(before)


def test_open_loop_at_a_fixed_rate_with_real_inputs(tmp_path, server):
    data = tmp_path / "inputs.json"
    data.write_text(json.dumps({"data": [{"INPUT": [0.1 * i] * 256} for i in range(3)]}))
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--request-rate", "150",
                      "--input-data", str(data), "--idle-seconds", "0", *FAST_FLAGS, "-o", str(tmp_path / "out")])
    assert result.returncode == 0, result.stderr[-2000:]
    m = json.loads((tmp_path / "out" / "measurement.json").read_text())["measurement"]
    assert m["load"] == {"mode": "request_rate", "request_rate_per_s": 150.0, "engine": "builtin"}
    assert m["throughput_per_s"]["mean"] == pytest.approx(150, rel=0.15)  # the server keeps up with the offered rate
    assert "150 req/s open loop" in result.stdout
