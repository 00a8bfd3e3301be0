"""--energy-accounting dynamic by hand: idle power x window time comes off each window's joules, never below 1%."""

from __future__ import annotations

import pytest

from tuner.load import LoadSpec, WindowStats
from tuner.measure import MeasureSettings, summarize
from tuner.meters.base import Reading
from tuner.results import TrialConfig

IDLE_W = 10.0


def windows():
    """Three windows of 1 s, 2 s and 0.5 s at 100 infer/s; the last used less than idle power."""
    out = []
    for duration_s, joules in ((1.0, {"cpu": 30.0}), (2.0, {"cpu": 60.0, "gpu0": 40.0}), (0.5, {"cpu": 4.0})):
        stats = WindowStats(duration_s=duration_s, latencies_ms=[2.0] * int(100 * duration_s))
        out.append((stats, [Reading("meter", "estimated", duration_s, energy_j=joules)]))
    return out


def test_dynamic_accounting_subtracts_idle_per_window_with_a_one_percent_floor():
    settings = MeasureSettings(energy_accounting="dynamic", idle_s=1.0)
    m = summarize(TrialConfig(), LoadSpec(concurrency=4), windows(), settings, idle_power_w=IDLE_W)
    # 30 - 10x1 = 20 J; 100 - 10x2 = 80 J; 4 - 10x0.5 = -1 J -> floor: 1% of 4 J = 0.04 J
    assert [w.energy_j for w in m.windows] == [pytest.approx(20.0), pytest.approx(80.0), pytest.approx(0.04)]
    assert m.energy_j == pytest.approx(100.04)
    assert m.total_energy_j == pytest.approx(134.0)
    assert m.energy_accounting == "dynamic" and m.idle_power_w == IDLE_W
    # inferences per joule per window: 100/20, 200/80, 50/0.04
    assert m.inferences_per_j.mean == pytest.approx((5.0 + 2.5 + 1250.0) / 3)
    assert m.energy_per_inference_j == pytest.approx(100.04 / 350)
    assert m.energy_domains_j == {"cpu": pytest.approx(94.0), "gpu0": pytest.approx(40.0)}  # domains stay totals


def test_total_accounting_keeps_the_joules_even_with_idle_power_known():
    settings = MeasureSettings(energy_accounting="total", idle_s=1.0)
    m = summarize(TrialConfig(), LoadSpec(concurrency=4), windows(), settings, idle_power_w=IDLE_W)
    assert [w.energy_j for w in m.windows] == [pytest.approx(30.0), pytest.approx(100.0), pytest.approx(4.0)]
    assert m.energy_j == pytest.approx(134.0) == m.total_energy_j
    assert m.energy_accounting == "total"
    assert m.inferences_per_j.mean == pytest.approx((100 / 30 + 200 / 100 + 50 / 4) / 3)
