"""Both load engines against the real embedded Triton server; windows that match Triton's own count; memory per config."""

from __future__ import annotations

import json

import psutil
import pytest

from tests.conftest import MODEL_REPOSITORY
from tests.integration.conftest import run_cli
from tuner.engines.pa_install import find_perf_analyzer
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureContext, MeasureSettings, load_trial, measure_loaded, measure_trial
from tuner.meters.select import select_meters
from tuner.model_config import load_model_config
from tuner.results import TrialConfig
from tuner.server import control
from tuner.server.metrics import inference_count

pytestmark = pytest.mark.integration

ENGINES = ["builtin", "perf_analyzer"]
FAST = MeasureSettings(warmup_s=0.5, window_s=1.0, max_windows=6, stability_tolerance=0.25)


def _perf_analyzer_or_skip(engine: str) -> None:
    if engine != "perf_analyzer":
        return
    try:
        find_perf_analyzer()
    except Exception as exc:  # scripts/test.sh fetches it (greentune doctor --fetch), so CI never skips
        pytest.skip(f"perf_analyzer not fetched: {exc}")


def _no_load_processes_left() -> list[str]:
    """perf_analyzer or built-in load workers (spawned) still running under this test (not the server or the
    multiprocessing resource tracker, which lives as long as the test process)."""
    me = psutil.Process()
    left = []
    for proc in me.children(recursive=True):
        try:
            cmd = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and ("perf_analyzer" in cmd or "spawn_main" in cmd):
                left.append(cmd[:120])
        except psutil.Error:
            continue
    return left


@pytest.mark.parametrize("engine", ENGINES)
def test_greentune_measure_with_each_engine(engine, tmp_path):
    _perf_analyzer_or_skip(engine)
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "-c", "4", "--load-generator", engine,
                      "--warmup", "0.5", "--window", "1", "--max-windows", "6", "--stability", "0.25",
                      "--idle-seconds", "0", "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert f"load generator: {engine}" in result.stderr
    assert f"load generator: {engine}" in result.stdout  # in the table, beside throughput and latency
    m = json.loads((tmp_path / "measurement.json").read_text())["measurement"]
    assert m["load"] == {"mode": "concurrency", "concurrency": 4, "engine": engine}
    assert m["success_count"] > 100 and m["failure_count"] == 0
    assert m["success_count"] == sum(w["success_count"] for w in m["windows"])
    assert 0 < m["p50_ms"] <= m["p95_ms"] and m["energy_source"] == "estimated"
    assert not any("nv_inference_count" in w for w in m["warnings"]), m["warnings"]


@pytest.mark.parametrize("engine", ENGINES)
def test_window_counts_match_tritons_inference_count(server, engine):
    """Each window's binned successes equal Triton's nv_inference_count over that window (within 2%)."""
    _perf_analyzer_or_skip(engine)
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    trial = TrialConfig(instance_count=1)
    ctx = MeasureContext(server, "mlp", base, InputSource({}), select_meters(server), FAST)
    samples = load_trial(ctx, trial)
    before = inference_count(server.metrics_url, "mlp") or 0.0  # no line until the model served a request
    m = measure_loaded(ctx, trial, LoadSpec(concurrency=8, engine=engine), samples)
    after = inference_count(server.metrics_url, "mlp")
    assert m.load["engine"] == engine and m.failure_count == 0
    assert not any("nv_inference_count" in w for w in m.warnings), m.warnings
    assert all(w.success_count > 0 and 0.95 < w.duration_s < 1.2 for w in m.windows)
    # The windows are a part of the run (warm-up and earlier windows excluded): never more than Triton served.
    assert after is not None
    assert sum(w.success_count for w in m.windows) < after - before
    assert _no_load_processes_left() == []


def test_a_one_instance_trial_after_a_four_instance_one_reports_its_own_memory(server):
    control.unload(server, "mlp_nobatch")  # another module's model: its stubs are not this test's business
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    meters = select_meters(server)
    load = LoadSpec(concurrency=2, engine="builtin")

    def memory_of(instances: int) -> float:
        settings = MeasureSettings(warmup_s=0.2, window_s=0.6, max_windows=3, stability_tolerance=0.9)
        m = measure_trial(MeasureContext(server, "mlp", base, InputSource({}), meters, settings),
                          TrialConfig(instance_count=instances), load)
        assert m.memory_mb is not None
        return m.memory_mb

    alone = memory_of(1)
    four = memory_of(4)
    after_four = memory_of(1)
    assert len(control.backend_stub_pids(server, "mlp")) == 1  # the four instances' stubs are gone
    assert four > 1.5 * alone  # four stubs really cost more ...
    assert after_four < 0.6 * four  # ... and none of them is counted in the next trial
    assert abs(after_four - alone) < 0.25 * alone
