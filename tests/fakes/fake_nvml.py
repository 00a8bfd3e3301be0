"""A fake at the pynvml call boundary that replays GPU power traces the way real NVML reports them.

Shaped on the H100 reference runs in shared/gpu/README.md: the total-energy counter, the 1 s averaged
power (nvmlDeviceGetPowerUsage) and the instantaneous-power field all update every ~100 ms; ~70 W with no
CUDA context, 117-131 W idle with the server up, 149-224 W under load (224 W: 4 instances without dynamic
batching). `idle_to_load_trace` replays a server going from idle to load; a GPU can lack the energy
counter or the instantaneous-power field (older parts). It raises the real pynvml error classes, so the
meter's error handling is exercised as on hardware.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pynvml

UPDATE_S = 0.1


def h100_trace(seconds: float = 120.0, idle_w: float = 118.0, load_w: float = 224.0, ramp_s: float = 0.5,
               seed: int = 0) -> np.ndarray:
    """Power (W) per 100 ms step: idle, then a ramp to load with ~1.5% jitter (as the reference counter showed)."""
    rng = np.random.default_rng(seed)
    steps = int(seconds / UPDATE_S)
    t = np.arange(steps) * UPDATE_S
    level = idle_w + (load_w - idle_w) * np.clip(t / ramp_s, 0, 1)
    return level * (1 + 0.015 * rng.standard_normal(steps))


def idle_to_load_trace(idle_s: float, ramp_s: float, idle_w: float = 121.0, load_w: float = 224.0,
                       seconds: float = 120.0, seed: int = 1) -> np.ndarray:
    """Power (W) per 100 ms step: server up and idle for idle_s, a linear ramp over ramp_s, then load (~1.5% jitter)."""
    rng = np.random.default_rng(seed)
    steps = int(seconds / UPDATE_S)
    t = np.arange(steps) * UPDATE_S
    level = idle_w + (load_w - idle_w) * np.clip((t - idle_s) / ramp_s, 0, 1)
    return level * (1 + 0.015 * rng.standard_normal(steps))


@dataclass
class FakeGpu:
    trace_w: np.ndarray
    name: str = "NVIDIA H100 80GB HBM3"
    memory_used_mb: float = 3200.0
    counter_supported: bool = True
    processes: tuple[int, ...] = ()
    instant_scale: float = 1.0  # a power sensor that reads off (A100/H100 sensors sample part of the time)
    instant_supported: bool = True  # NVML_FI_DEV_POWER_INSTANT (newer drivers and parts only)


class FakeNvml:
    """Module-like: the pynvml functions greentune calls, replaying traces against the monotonic clock."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported
    NVML_FI_DEV_POWER_INSTANT = pynvml.NVML_FI_DEV_POWER_INSTANT

    def __init__(self, gpus: list[FakeGpu], fail_after_s: float | None = None) -> None:
        self.gpus = gpus
        self.start = time.monotonic()
        self.fail_after_s = fail_after_s
        self.calls: list[str] = []
        self.counter_reads: list[tuple[int, int]] = []

    # -- replay helpers
    def _now(self) -> float:
        return time.monotonic() - self.start

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self.fail_after_s is not None and self._now() >= self.fail_after_s:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    def _step(self) -> int:
        return int(self._now() / UPDATE_S)

    def energy_between_j(self, index: int, t0: float, t1: float) -> float:
        """Exact joules of the trace between two elapsed times (for tests' expectations)."""
        trace = self.gpus[index].trace_w
        s0, s1 = int(t0 / UPDATE_S), int(t1 / UPDATE_S)
        return float(trace[s0:s1].sum() * UPDATE_S)

    def true_energy_j(self, index: int, t0: float, t1: float) -> float:
        """Joules the replayed GPU drew between two elapsed times (the trace's steps, cut at both ends)."""
        trace = self.gpus[index].trace_w
        s0, s1 = int(t0 / UPDATE_S), int(t1 / UPDATE_S)
        if s0 == s1:
            return float(trace[s0] * (t1 - t0))
        inner = trace[s0 + 1:s1].sum() * UPDATE_S
        return float(inner + trace[s0] * ((s0 + 1) * UPDATE_S - t0) + trace[s1] * (t1 - s1 * UPDATE_S))

    def average_power_w(self, index: int, t: float) -> float:
        """What nvmlDeviceGetPowerUsage answers at elapsed time t: the mean of the last ~1 s of steps."""
        step = int(t / UPDATE_S)
        return float(self.gpus[index].trace_w[max(0, step - 10): step + 1].mean())

    # -- pynvml API
    def nvmlInit(self) -> None:
        self._check("nvmlInit")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self._check("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check("handle")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str:
        return self.gpus[handle].name

    def nvmlSystemGetDriverVersion(self) -> str:
        return "580.159.04"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        """mJ since driver load; advances once per 100 ms step (integer, monotonic)."""
        self._check("energy")
        gpu = self.gpus[handle]
        if not gpu.counter_supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        step = self._step()
        value = int(5_000_000_000 + gpu.trace_w[:step].sum() * UPDATE_S * 1000)
        self.counter_reads.append((handle, value))
        return value

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        """mW averaged over the last 1 s (Ampere and newer)."""
        self._check("power")
        return int(self.average_power_w(handle, self._now()) * 1000)

    def nvmlDeviceGetFieldValues(self, handle: int, field_ids: list[int]) -> list[SimpleNamespace]:
        self._check("field")
        out = []
        for field_id in field_ids:
            gpu = self.gpus[handle]
            if field_id == pynvml.NVML_FI_DEV_POWER_INSTANT and gpu.instant_supported:
                watts = gpu.trace_w[self._step()] * gpu.instant_scale
                out.append(SimpleNamespace(nvmlReturn=0, valueType=1,
                                           value=SimpleNamespace(uiVal=int(watts * 1000))))
            else:
                out.append(SimpleNamespace(nvmlReturn=pynvml.NVML_ERROR_NOT_SUPPORTED, value=None))
        return out

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._check("memory")
        used = int(self.gpus[handle].memory_used_mb * 1e6)
        return SimpleNamespace(total=int(80e9), used=used, free=int(80e9) - used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        self._check("processes")
        return [SimpleNamespace(pid=p, usedGpuMemory=int(1e9)) for p in self.gpus[handle].processes]


def mean_power_w(trace: np.ndarray, t0: float, t1: float) -> float:
    s0, s1 = int(t0 / UPDATE_S), max(int(t0 / UPDATE_S) + 1, int(t1 / UPDATE_S))
    return float(trace[s0:s1].mean()) if s1 > s0 else math.nan
