"""Every meter keeps the contract: begin/end windows return a Reading with a source, non-negative figures."""

from __future__ import annotations

import os
import time

import pytest

from tests.fakes.fake_nvml import FakeGpu, FakeNvml, h100_trace
from tests.unit.test_meters import _powercap
from tuner.meters.base import SOURCE_ESTIMATED, SOURCE_NVML, SOURCE_RAPL
from tuner.meters.estimate import EstimateMeter
from tuner.meters.memory import MemoryMeter
from tuner.meters.nvml import NvmlMeter
from tuner.meters.rapl import RaplMeter
from tuner.server.probes import SOURCE_RSS, ProcessTreeProbe


def make(name, tmp_path):
    if name == "estimate":
        return EstimateMeter(ProcessTreeProbe(os.getpid()), 30.0)
    if name == "memory":
        return MemoryMeter(ProcessTreeProbe(os.getpid()))
    if name == "rapl":
        return RaplMeter(_powercap(tmp_path, 1_000_000, 1_000_000))
    return NvmlMeter([0], nvml=FakeNvml([FakeGpu(h100_trace())]))


@pytest.mark.parametrize("name", ["estimate", "memory", "rapl", "nvml"])
def test_meter_contract(name, tmp_path):
    meter = make(name, tmp_path)
    assert isinstance(meter.measures_energy, bool) and meter.min_window_s >= 0 and meter.preferred_window_s > 0
    for _ in range(2):  # windows can be repeated on one meter
        meter.begin()
        time.sleep(0.3)
        reading = meter.end()
        assert reading.meter == meter.name and reading.duration_s > 0.2
        assert reading.source in (SOURCE_ESTIMATED, SOURCE_NVML, SOURCE_RAPL, SOURCE_RSS)
        assert bool(reading.energy_j) == meter.measures_energy
        assert all(j >= 0 for j in reading.energy_j.values())
        assert reading.memory_mb is None or reading.memory_mb > 0
    meter.close()
    meter.close()  # idempotent
