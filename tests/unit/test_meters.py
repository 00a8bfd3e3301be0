"""Meters against fakes at the hardware boundary: pynvml replaying H100-like traces, a made-up powercap tree."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.fakes.fake_nvml import FakeGpu, FakeNvml, h100_trace
from tuner.errors import BadInput, MeterUnavailable
from tuner.meters import nvml as nvml_meter
from tuner.meters.base import SOURCE_ESTIMATED, SOURCE_NVML, SOURCE_RAPL
from tuner.meters.nvml import NvmlMeter
from tuner.meters.rapl import RaplMeter, delta_uj, find_domains
from tuner.meters.select import select_meters
from tuner.server.base import Server
from tuner.server.probes import ProcessTreeProbe

WINDOW_S = 2.0


def run_window(meter, seconds=WINDOW_S, fake=None, power_reads=0):
    """One window of at least `seconds`, held open until the fake has answered `power_reads` power samples."""
    meter.begin()
    time.sleep(seconds)
    deadline = time.monotonic() + 120
    while fake is not None and fake.calls.count("power") < power_reads and time.monotonic() < deadline:
        time.sleep(0.05)  # a busy machine delays the sampling thread: wait for the samples, not the clock
    return meter.end()


@pytest.fixture(autouse=True)
def _reset_nvml_cache():
    nvml_meter.reset_cache()
    yield
    nvml_meter.reset_cache()


def test_counter_gives_the_replayed_joules():
    fake = FakeNvml([FakeGpu(h100_trace(idle_w=224.0, load_w=224.0))])
    reading = run_window(NvmlMeter([0], nvml=fake), fake=fake, power_reads=15)
    assert reading.source == SOURCE_NVML
    first, last = fake.counter_reads[0][1], fake.counter_reads[-1][1]
    assert reading.energy_j["gpu0"] == pytest.approx((last - first) / 1000.0)
    # ~224 W over the window; the counter's 100 ms steps bound the error
    assert reading.energy_j["gpu0"] == pytest.approx(224.0 * reading.duration_s, rel=0.08)
    gpu = reading.details["gpus"]["gpu0"]
    assert gpu["method"] == "energy counter" and gpu["samples"] >= 15
    assert abs(gpu["disagreement"]) < 0.10 and reading.details["warnings"] == []
    assert reading.memory_mb == pytest.approx(3200.0) and reading.details["memory_kind"] == "gpu"


def test_unsupported_counter_falls_back_to_sampled_power():
    fake = FakeNvml([FakeGpu(h100_trace(idle_w=150.0, load_w=150.0), counter_supported=False)])
    reading = run_window(NvmlMeter([0], nvml=fake))
    gpu = reading.details["gpus"]["gpu0"]
    assert gpu["method"].startswith("integrated power samples") and gpu["counter_j"] is None
    assert reading.energy_j["gpu0"] == pytest.approx(150.0 * reading.duration_s, rel=0.10)


def test_driver_error_mid_window_is_a_warning_and_an_estimate_not_a_crash():
    fake = FakeNvml([FakeGpu(h100_trace(idle_w=200.0, load_w=200.0))], fail_after_s=1.0)
    reading = run_window(NvmlMeter([0], nvml=fake))
    gpu = reading.details["gpus"]["gpu0"]
    assert "NVML failed mid-window" in gpu["method"]
    assert any("NVML error" in w for w in reading.details["warnings"])
    assert reading.energy_j["gpu0"] == pytest.approx(200.0 * reading.duration_s, rel=0.10)


def test_sensor_disagreement_over_ten_percent_is_flagged():
    fake = FakeNvml([FakeGpu(h100_trace(idle_w=220.0, load_w=220.0), instant_scale=1.25)])
    reading = run_window(NvmlMeter([0], nvml=fake))
    assert reading.details["gpus"]["gpu0"]["disagreement"] > 0.10
    assert any("disagree" in w for w in reading.details["warnings"])


def test_other_processes_on_the_gpu_are_reported():
    fake = FakeNvml([FakeGpu(h100_trace(), processes=(4242,))])
    reading = run_window(NvmlMeter([0], server_pids=lambda: {1}, nvml=fake), 0.5)
    assert any("4242" in w and "counted" in w for w in reading.details["warnings"])


def test_only_the_requested_gpus_are_metered():
    fake = FakeNvml([FakeGpu(h100_trace(load_w=300.0)), FakeGpu(h100_trace(load_w=100.0))])
    reading = run_window(NvmlMeter([1], nvml=fake), 0.6)
    assert list(reading.energy_j) == ["gpu1"]
    with pytest.raises(MeterUnavailable, match="GPU 5 does not exist"):
        NvmlMeter([5], nvml=fake)


def _powercap(root: Path, package_uj: int, dram_uj: int, max_uj: int = 262143328850) -> Path:
    for zone, name, value in (("intel-rapl:0", "package-0", package_uj), ("intel-rapl:0/intel-rapl:0:0", "core", 5),
                              ("intel-rapl:0/intel-rapl:0:1", "dram", dram_uj)):
        path = root / zone
        path.mkdir(parents=True, exist_ok=True)
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{value}\n")
        (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def test_rapl_reads_package_and_dram_with_wraparound(tmp_path):
    root = _powercap(tmp_path, package_uj=262143328850 - 1_000_000, dram_uj=10_000_000)
    meter = RaplMeter(root)
    assert [d.label for d in meter.domains] == ["package0", "package0-dram"]
    meter.begin()
    (root / "intel-rapl:0" / "energy_uj").write_text("4000000\n")  # wrapped: 1 J before the top + 4 J after
    (root / "intel-rapl:0" / "intel-rapl:0:1" / "energy_uj").write_text("12500000\n")
    reading = meter.end()
    assert reading.source == SOURCE_RAPL
    assert reading.energy_j["cpu-package0"] == pytest.approx(5.000001, rel=1e-6)
    assert reading.energy_j["cpu-package0-dram"] == pytest.approx(2.5)
    assert delta_uj(10, 30, 100) == 20 and delta_uj(90, 10, 100) == 21


def test_rapl_unreadable_files_explain_the_fix(tmp_path, monkeypatch):
    root = _powercap(tmp_path, 1, 1)
    real = Path.read_text

    def deny(self, *args, **kwargs):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(MeterUnavailable, match="not readable; .*CVE-2020-8694.*udev rule") as unreadable:
        find_domains(root)
    assert "chmod a+r" not in str(unreadable.value) and "chgrp rapl" in str(unreadable.value)
    with pytest.raises(MeterUnavailable, match="does not exist"):
        find_domains(tmp_path / "missing")


def _server() -> Server:
    return Server(grpc_url="127.0.0.1:1", http_url="http://127.0.0.1:0", metrics_url=None, pid=os.getpid(),
                  probe=ProcessTreeProbe(os.getpid()))


def test_auto_selection(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml_meter, "nvml_module", lambda: (_ for _ in ()).throw(MeterUnavailable("no NVML")))
    names = [m.name for m in select_meters(_server(), "auto", powercap_root=tmp_path / "none")]
    assert names == ["estimate", "memory"]
    names = [m.name for m in select_meters(_server(), "auto", powercap_root=_powercap(tmp_path / "pc", 1, 1))]
    assert names == ["rapl", "memory"]
    fake = FakeNvml([FakeGpu(h100_trace()), FakeGpu(h100_trace())])
    monkeypatch.setattr(nvml_meter, "nvml_module", lambda: fake)
    meters = select_meters(_server(), "auto", powercap_root=tmp_path / "none")
    assert [m.name for m in meters] == ["nvml", "estimate", "memory"]  # GPU and host CPU together
    assert [g.index for g in meters[0].gpus] == [0, 1]
    assert [g.index for g in select_meters(_server(), "auto", gpus=[1], powercap_root=tmp_path / "none")[0].gpus] == [1]


def test_explicit_meter_that_cannot_run_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml_meter, "nvml_module", lambda: (_ for _ in ()).throw(MeterUnavailable("NVML: cannot initialise")))
    with pytest.raises(MeterUnavailable, match="NVML"):
        select_meters(_server(), "nvml")
    with pytest.raises(MeterUnavailable, match="RAPL"):
        select_meters(_server(), "rapl", powercap_root=tmp_path)
    remote = Server(grpc_url="h:8001", http_url="http://h:8000", metrics_url=None, pid=None)
    with pytest.raises(MeterUnavailable, match="needs the server's process on this machine"):
        select_meters(remote, "estimate")
    with pytest.raises(BadInput, match="--energy-meter joules"):
        select_meters(_server(), "joules")


def test_estimate_meter_counts_this_process_cpu_time():
    estimate = select_meters(_server(), "estimate", cpu_tdp_watts=40.0)[0]
    estimate.begin()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    reading = estimate.end()
    assert reading.source == SOURCE_ESTIMATED and reading.details["cpu_s"] >= 0.25
    cores = reading.details["logical_cores"]
    expected = reading.details["cpu_s"] * 40.0 / cores + 0.2 * 40.0 * reading.duration_s
    assert reading.energy_j["cpu"] == pytest.approx(expected)


def test_container_servers_do_not_flag_every_gpu_process_as_foreign(tmp_path, monkeypatch):
    class ContainerLike(ProcessTreeProbe):
        pids_visible = False

    fake = FakeNvml([FakeGpu(h100_trace(), processes=(4242,))])
    monkeypatch.setattr(nvml_meter, "nvml_module", lambda: fake)
    server = Server(grpc_url="h:1", http_url="http://h:0", metrics_url=None, probe=ContainerLike(os.getpid()))
    meter = select_meters(server, "auto", powercap_root=tmp_path / "none")[0]
    assert meter.server_pids is None
    reading = run_window(meter, 0.3)
    assert not any("4242" in w for w in reading.details["warnings"])
