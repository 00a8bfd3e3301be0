"""The NVML meter over an idle-to-load ramp (H100 figures), with and without the counter and instantaneous power."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.fakes.fake_nvml import FakeGpu, FakeNvml, idle_to_load_trace
from tuner.meters import nvml as nvml_meter
from tuner.meters.nvml import NvmlMeter

IDLE_S, RAMP_S = 1.0, 0.6  # replay: server up and idle (~121 W) until 1 s, at load (~224 W) from 1.6 s
BEGIN_AT_S, END_AT_S = 0.5, 2.6  # the window opens in idle and closes 1 s into load


@pytest.fixture(autouse=True)
def _reset_nvml_cache():
    nvml_meter.reset_cache()
    yield
    nvml_meter.reset_cache()


def ramp_window(**gpu):
    """One window across the ramp; returns the fake, the reading and the replay times around begin() and end()."""
    fake = FakeNvml([FakeGpu(idle_to_load_trace(IDLE_S, RAMP_S), **gpu)])
    meter = NvmlMeter([0], nvml=fake)
    fake.start = time.monotonic() - BEGIN_AT_S  # the replay stands at 0.5 s when the window opens
    before_begin = fake._now()
    meter.begin()
    after_begin = fake._now()
    while fake._now() < END_AT_S:  # wait on the replay's clock, however slowly this machine runs
        time.sleep(0.01)
    before_end = fake._now()
    reading = meter.end()
    after_end = fake._now()
    assert after_begin < IDLE_S  # the ramp lies inside the window
    return fake, reading, (before_begin, after_begin, before_end, after_end)


def averaged_power_energy_j(fake: FakeNvml, t0: float, t1: float) -> float:
    """Joules from integrating what nvmlDeviceGetPowerUsage (1 s average) reports over [t0, t1]."""
    times = np.linspace(t0, t1, 2000)
    watts = [fake.average_power_w(0, t) for t in times]
    return float(np.trapezoid(watts, times) if hasattr(np, "trapezoid") else np.trapz(watts, times))


def test_counter_gives_the_ramps_joules():
    fake, reading, (b0, b1, e0, e1) = ramp_window()
    joules = reading.energy_j["gpu0"]
    # the counter was read somewhere inside [b0, b1] and [e0, e1]: the replayed joules are bounded exactly
    assert fake.energy_between_j(0, b1, e0) - 0.002 <= joules <= fake.energy_between_j(0, b0, e1) + 0.002
    assert 121.0 * reading.duration_s * 1.2 < joules < 224.0 * reading.duration_s * 0.9  # neither idle nor load
    gpu = reading.details["gpus"]["gpu0"]
    assert gpu["method"] == "energy counter"
    # instantaneous samples follow the ramp: no false disagreement flag
    assert abs(gpu["disagreement"]) < 0.10 and reading.details["warnings"] == []


def test_without_the_counter_instantaneous_samples_are_integrated_over_the_ramp():
    fake, reading, (b0, b1, e0, e1) = ramp_window(counter_supported=False)
    gpu = reading.details["gpus"]["gpu0"]
    assert gpu["method"].startswith("integrated power samples") and gpu["counter_j"] is None
    assert reading.energy_j["gpu0"] == pytest.approx(fake.true_energy_j(0, b1, e0), rel=0.03)


def test_without_counter_or_instantaneous_field_the_one_second_average_is_integrated_and_lags_the_ramp():
    fake, reading, (b0, b1, e0, e1) = ramp_window(counter_supported=False, instant_supported=False)
    joules = reading.energy_j["gpu0"]
    assert reading.details["gpus"]["gpu0"]["method"].startswith("integrated power samples")
    assert joules == pytest.approx(averaged_power_energy_j(fake, b1, e0), rel=0.03)
    assert joules < 0.97 * fake.true_energy_j(0, b0, e1)  # a 1 s average trails a rising load


def test_counter_with_no_instantaneous_field_keeps_exact_joules_and_cross_checks_with_the_average():
    fake, reading, (b0, b1, e0, e1) = ramp_window(instant_supported=False)
    joules = reading.energy_j["gpu0"]
    assert fake.energy_between_j(0, b1, e0) - 0.002 <= joules <= fake.energy_between_j(0, b0, e1) + 0.002
    gpu = reading.details["gpus"]["gpu0"]
    assert gpu["method"] == "energy counter"
    assert gpu["sampled_j"] < gpu["counter_j"]  # the cross-check integrated the lagging 1 s average
