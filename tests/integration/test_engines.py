"""Both load engines against the real embedded Triton server; windows that match Triton's own count; memory per config."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import replace

import pandas as pd
import psutil
import pytest

from tests.conftest import MODEL_REPOSITORY, ROOT
from tests.integration.conftest import FAST_FLAGS, run_cli
from tests.integration.pa_cut import CUTS, cut_at
from tuner import paths
from tuner.engines import run_engine
from tuner.engines.pa_install import find_perf_analyzer
from tuner.engines.perf_analyzer import parse_export
from tuner.errors import LoadToolError
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


WRAPPER = "#!{python}\nimport sys\nsys.path.insert(0, {root!r})\nfrom tests.integration.pa_cut import main\nmain()\n"


def _installs() -> list[tuple[str, object]]:
    """The perf_analyzer greentune finds (skipped when not fetched) and, where cached too, 2.51 (tensors exported)."""
    from tuner.engines.pa_install import PerfAnalyzer
    from tuner.server.embedded import cache_dir

    found: list[tuple[str, object]] = []
    try:
        found.append(("default", find_perf_analyzer()))
    except Exception:  # scripts/test.sh fetches it (greentune doctor --fetch), so CI never skips
        pass
    home = cache_dir() / "perf_analyzer-2.51.0"
    if (home / "bin" / "perf_analyzer").exists() and not any("2.51.0" in str(i.binary) for _, i in found):
        found.append(("2.51", PerfAnalyzer(home / "bin" / "perf_analyzer", {"LD_LIBRARY_PATH": str(home / "lib")})))
    return found


@pytest.fixture
def wrapper(tmp_path, monkeypatch, request):
    """(path of the stand-in perf_analyzer, where it keeps the last export) for the install named by the param."""
    installs = dict(_installs())
    name = getattr(request, "param", "default")
    if name not in installs:
        pytest.skip(f"perf_analyzer ({name}) not fetched")
    install = installs[name]
    path = tmp_path / "perf_analyzer"
    path.write_text(WRAPPER.format(python=sys.executable, root=str(ROOT)))
    path.chmod(0o755)
    keep = tmp_path / "kept-export.json"
    monkeypatch.setenv("GT_TEST_REAL_PA", str(install.binary))
    monkeypatch.setenv("GT_TEST_REAL_ENV", json.dumps(install.env))
    monkeypatch.setenv("GT_TEST_COUNTER", str(tmp_path / "runs"))
    monkeypatch.setenv("GT_TEST_KEEP", str(keep))
    monkeypatch.delenv("GT_TEST_CUT", raising=False)
    return path, keep


class SessionLauncher:
    """The session's server as a launcher: a Bench on it measures trials without starting a server of its own."""

    name = "session"

    def __init__(self, server) -> None:
        self._server = server

    @contextlib.contextmanager
    def start(self, model_repository, output_dir):
        yield self._server


@pytest.mark.parametrize("wrapper", ["default", "2.51"], indirect=True)
def test_a_real_export_cut_at_five_points_is_one_line_naming_it(server, wrapper, tmp_path):
    path, keep = wrapper
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    ctx = MeasureContext(server, "mlp", base, InputSource({}), [], FAST)
    samples = load_trial(ctx, TrialConfig(instance_count=1))
    with run_engine(server.grpc_url, "mlp", samples, LoadSpec(concurrency=4, engine="perf_analyzer",
                                                              perf_analyzer=path)) as engine:
        # Until Triton has served 1,000 requests from the tool (a fixed sleep left the export empty on a busy CI
        # machine, where perf_analyzer took longer than the sleep to start sending).
        before = inference_count(server.metrics_url, "mlp") or 0.0
        deadline = time.monotonic() + 60.0
        while (inference_count(server.metrics_url, "mlp") or 0.0) - before < 1000 and time.monotonic() < deadline:
            time.sleep(0.2)
        whole = engine.stop()
    data = keep.read_bytes()
    assert len(whole) > 500 and not whole.damage
    for where in CUTS:
        export = tmp_path / f"cut-{where}.json"
        export.write_bytes(data[:cut_at(data, where)])
        with pytest.raises(LoadToolError) as raised:
            parse_export(export)
        message = str(raised.value)
        assert "\n" not in message and str(export) in message and "free on its filesystem" in message, message
        kept = parse_export(export, keep_partial=True)
        assert kept.send_ns.tolist() == whole.send_ns[:len(kept)].tolist()
        if where == "end":  # every request was read: all of them stay
            assert len(kept) == len(whole) and kept.complete_until_ns is None
        else:  # the first half stays, and nothing that completed before complete_until_ns is missing
            assert 0.3 * len(whole) < len(kept) < 0.7 * len(whole), (where, len(kept), len(whole))
            assert kept.complete_until_ns is not None
            assert not (whole.done_ns[len(kept):] < kept.complete_until_ns).any()


def _bench(server, tmp_path, perf_analyzer, settings):
    from tuner.bench import Bench, LoadPolicy

    load = LoadPolicy(LoadSpec(concurrency=4, engine="perf_analyzer", perf_analyzer=perf_analyzer))
    return Bench(SessionLauncher(server), MODEL_REPOSITORY, "mlp", load_model_config(MODEL_REPOSITORY, "mlp"),
                 tmp_path / "out", InputSource({}), load, settings)


# Never stable (so always 4 windows of 1 s); 3 of them are measured.
FOUR_WINDOWS = MeasureSettings(warmup_s=0.5, window_s=1.0, max_windows=4, stability_tolerance=1e-6, idle_s=0)


@pytest.mark.parametrize("where", CUTS)
def test_a_cut_export_fails_its_trial_as_the_tools_or_keeps_its_windows_and_the_next_trial_runs(
        server, wrapper, tmp_path, monkeypatch, where):
    path, _ = wrapper
    monkeypatch.setenv("GT_TEST_CUT", where)
    with _bench(server, tmp_path, path, FOUR_WINDOWS) as bench:
        cut = bench.measure(TrialConfig(instance_count=1), 0)
        after = bench.measure(TrialConfig(instance_count=1, dynamic_batching=True), 1)
    if cut.failed:  # too few windows before the damage: the tool's failure, never the config's
        assert cut.tool_failure and cut.failure_reason is not None
        assert "perf_analyzer's export" in cut.failure_reason and "free on its filesystem" in cut.failure_reason
        assert "\n" not in cut.failure_reason
    else:  # the windows before the damage are the measurement, and it says so
        assert cut.measurement is not None and len(cut.measurement.windows) == 3
        assert any("perf_analyzer's export" in w for w in cut.measurement.warnings), cut.measurement.warnings
    assert where != "end" or not cut.failed  # cut after its requests: nothing of the measured windows is lost
    assert not after.failed and after.measurement is not None and after.measurement.success_count > 100
    assert not any("perf_analyzer's export" in w for w in after.measurement.warnings)
    assert _no_load_processes_left() == []


def test_an_export_cut_late_keeps_the_windows_it_covers(server, wrapper, tmp_path, monkeypatch):
    path, keep = wrapper
    monkeypatch.setenv("GT_TEST_CUT", "between_records")
    monkeypatch.setenv("GT_TEST_CUT_FRACTION", "0.97")
    settings = replace(FOUR_WINDOWS, max_windows=5)
    with _bench(server, tmp_path, path, settings) as bench:
        result = bench.measure(TrialConfig(instance_count=1), 0)
    assert not result.failed and result.measurement is not None, result.failure_reason
    warning = next(w for w in result.measurement.warnings if "perf_analyzer's export" in w)
    assert "measured from the" in warning and "after it dropped" in warning, warning
    assert len(result.measurement.windows) == 3


def test_a_search_whose_first_export_is_cut_keeps_running(wrapper, tmp_path, monkeypatch):
    path, _ = wrapper
    out = tmp_path / "search"
    monkeypatch.setenv("GT_TEST_CUT", "tensor_or_timestamp")
    monkeypatch.setenv("GT_TEST_CUT_RUN", "1")
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "-c", "4",
                      *FAST_FLAGS[:-2], "--load-generator", "perf_analyzer", "--perf-analyzer", str(path),
                      "--trials", "2", "--idle-seconds", "0", "-o", str(out)])
    assert result.returncode in (0, 3), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2  # the damaged export did not stop the search
    stderr = " ".join(result.stderr.split())
    records = [json.loads(p.read_text())["trial"] for p in paths.trial_record_paths(out)]
    assert len(records) == 2
    warned = any("perf_analyzer's export" in w for r in records if r["measurement"]
                 for w in r["measurement"]["warnings"])
    # Either the first attempt failed as the tool's (and was measured once more), or it kept its good windows.
    assert "measuring it once more" in stderr and "perf_analyzer's export" in stderr or warned, stderr[-2000:]
