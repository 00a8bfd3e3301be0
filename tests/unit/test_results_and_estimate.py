from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tuner.load import LoadSpec, WindowStats
from tuner.measure import MeasureSettings, summarize
from tuner.meters.base import Reading
from tuner.meters.estimate import default_tdp_w, estimate_energy_j
from tuner.results import Measurement, Spread, TrialConfig, TrialResult, write_json


def test_estimate_arithmetic():
    # 4 CPU-seconds on an 8-core 80 W part: 40 J dynamic, plus 20% of 80 W over 10 s idle share
    assert estimate_energy_j(4.0, 10.0, 80.0, 8, 0.2) == pytest.approx(40.0 + 160.0)
    assert default_tdp_w("AMD EPYC 7763 64-Core Processor", 128)[0] == 280.0
    watts, basis = default_tdp_w("Some CPU", 2)
    assert watts == 20.0 and "10 W x 2 logical cores" in basis


def test_spread():
    s = Spread.of([1.0, 2.0, 3.0])
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert Spread.of([5.0]).sd == 0.0
    assert Spread.of([]).n == 0 and math.isnan(Spread.of([]).mean)


def _windows(failures=0):
    out = []
    for t in (100.0, 101.0, 99.0):
        stats = WindowStats(duration_s=1.0, latencies_ms=[1.0] * int(t), failure_count=failures)
        out.append((stats, [Reading("estimate", "estimated", 1.0, energy_j={"cpu": 10.0}),
                            Reading("memory", "RSS of server processes", 1.0, memory_mb=120.0)]))
    return out


def test_summarize_combines_windows_with_sources():
    m = summarize(TrialConfig(instance_count=2), LoadSpec(concurrency=4), _windows(), MeasureSettings())
    assert m.success_count == 300 and m.energy_j == pytest.approx(30.0)
    assert m.energy_source == "estimated" and m.energy_domains_j == {"cpu": pytest.approx(30.0)}
    assert m.inferences_per_j.mean == pytest.approx(10.0) and m.inferences_per_j.n == 3
    assert m.memory_mb == 120.0 and m.stable
    again = Measurement.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_summarize_fails_on_error_rate():
    from tuner.errors import LoadGenerationError

    with pytest.raises(LoadGenerationError, match="requests failed"):
        summarize(TrialConfig(), LoadSpec(concurrency=4), _windows(failures=50), MeasureSettings())


def test_trial_result_round_trip(tmp_path):
    m = summarize(TrialConfig(), LoadSpec(concurrency=1), _windows(), MeasureSettings())
    result = TrialResult(3, TrialConfig(instance_count=1), m, violations={"p99": -1.0})
    assert result.feasible
    assert TrialResult.from_dict(result.to_dict()) == result
    failed = TrialResult(4, TrialConfig(), None, failure_reason="load failed")
    assert failed.failed and not failed.feasible
    write_json(tmp_path / "r.json", {"value": float("nan"), "result": failed.to_dict()})
    document = json.loads((tmp_path / "r.json").read_text())
    assert document["schema_version"] == 1 and document["value"] is None


def test_pure_modules_import_no_network_or_hardware():
    code = (
        "import sys; import tuner.results, tuner.model_config, tuner.errors, tuner.space, tuner.objective, tuner.impact,"
        " tuner.screening;"
        "bad = [m for m in ('docker', 'pynvml', 'subprocess', 'tritonclient.grpc.aio', 'tritonclient.http', 'psutil')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
