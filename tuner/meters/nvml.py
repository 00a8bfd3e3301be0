"""GPU energy and memory through NVML: total-energy counter deltas, cross-checked by ~100 ms power sampling."""

from __future__ import annotations

import functools
import math
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from tuner.errors import MeterUnavailable
from tuner.meters.base import SOURCE_NVML, Reading

SAMPLE_INTERVAL_S = 0.1
MIN_WINDOW_S = 5.0  # power sensors average over ~1 s and sample only part of the time: shorter windows mislead
# The total-energy counter agreed with integrated power within 1% over 5 s windows of steady load (H100, H200):
# 5 s is the default, so three windows and a search of ten configs fit in minutes.
PREFERRED_WINDOW_S = 5.0
DISAGREEMENT_LIMIT = 0.10


@functools.lru_cache(maxsize=1)
def nvml_module() -> ModuleType:
    """The pynvml module, initialised once; MeterUnavailable with the reason when NVML cannot start."""
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable("NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise MeterUnavailable(f"NVML: cannot initialise ({exc}); needs an NVIDIA GPU and driver") from None
    return pynvml


def reset_cache() -> None:
    """Forget what was found (tests swap the NVML module)."""
    nvml_module.cache_clear()


def gpu_count() -> int:
    """GPUs NVML sees here (0 when NVML is unavailable)."""
    try:
        nvml = nvml_module()
        return int(nvml.nvmlDeviceGetCount())
    except MeterUnavailable:
        return 0
    except Exception:
        return 0


@dataclass
class _GpuState:
    index: int
    handle: Any
    counter_supported: bool = True
    start_counter_mj: int = 0
    samples: list[tuple[float, float | None, float | None]] = field(default_factory=list)  # (t, avg W, instant W)
    peak_memory_mb: float = 0.0
    error: str | None = None
    foreign_pids: set[int] = field(default_factory=set)


class NvmlMeter:
    """Joules per GPU from nvmlDeviceGetTotalEnergyConsumption deltas; sampled power as cross-check or fallback."""

    name = "nvml"
    measures_energy = True
    min_window_s = MIN_WINDOW_S
    preferred_window_s = PREFERRED_WINDOW_S

    def __init__(self, gpu_indices: list[int], server_pids: Any = None, metrics_url: str | None = None,
                 nvml: ModuleType | None = None, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.nvml = nvml if nvml is not None else nvml_module()
        self.interval_s = interval_s
        self.metrics_url = metrics_url
        self.server_pids = server_pids  # callable -> set of pids of the server tree, or None
        try:
            count = self.nvml.nvmlDeviceGetCount()
            for index in gpu_indices:
                if not 0 <= index < count:
                    raise MeterUnavailable(f"--gpus: GPU {index} does not exist (this machine has {count})")
            self.gpus = [_GpuState(i, self.nvml.nvmlDeviceGetHandleByIndex(i)) for i in gpu_indices]
        except self.nvml.NVMLError as exc:
            raise MeterUnavailable(f"NVML: cannot open GPUs {gpu_indices}: {exc}") from None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0
        self._triton_start: float | None = None

    def _read_counter(self, gpu: _GpuState) -> int | None:
        if not gpu.counter_supported:
            return None
        try:
            return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
        except self.nvml.NVMLError_NotSupported:
            gpu.counter_supported = False
            return None

    def _instant_w(self, gpu: _GpuState) -> float | None:
        try:
            value = self.nvml.nvmlDeviceGetFieldValues(gpu.handle, [self.nvml.NVML_FI_DEV_POWER_INSTANT])[0]
        except self.nvml.NVMLError:
            return None
        if value.nvmlReturn != 0:
            return None
        return float(value.value.uiVal) / 1000.0

    def _sample(self) -> None:
        now = time.monotonic()
        for gpu in self.gpus:
            if gpu.error:
                continue
            try:
                average = self.nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
                gpu.samples.append((now, average, self._instant_w(gpu)))
                memory = self.nvml.nvmlDeviceGetMemoryInfo(gpu.handle)
                gpu.peak_memory_mb = max(gpu.peak_memory_mb, memory.used / 1e6)
                self._note_processes(gpu)
            except self.nvml.NVMLError as exc:
                gpu.error = f"GPU {gpu.index}: NVML error during sampling: {exc}"

    def _note_processes(self, gpu: _GpuState) -> None:
        if self.server_pids is None:
            return
        try:
            procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(gpu.handle)
        except self.nvml.NVMLError:
            return
        ours = self.server_pids()
        gpu.foreign_pids.update(p.pid for p in procs if p.pid not in ours)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def begin(self) -> None:
        """Read each GPU's energy counter and start sampling power every ~100 ms."""
        self.close()
        for gpu in self.gpus:
            gpu.samples.clear()
            gpu.peak_memory_mb = 0.0
            gpu.error = None
            gpu.foreign_pids.clear()
            try:
                counter = self._read_counter(gpu)
            except self.nvml.NVMLError as exc:
                gpu.error = f"GPU {gpu.index}: NVML error reading the energy counter: {exc}"
                counter = None
            gpu.start_counter_mj = counter or 0
        self._triton_start = self._triton_energy_j()
        self._start = time.monotonic()
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="greentune-nvml", daemon=True)
        self._thread.start()

    def end(self) -> Reading:
        """Joules per GPU over the window, the method used, and a flag where sampled power disagrees by >10%."""
        self.close()
        self._sample()
        duration = time.monotonic() - self._start
        energy: dict[str, float] = {}
        per_gpu: dict[str, Any] = {}
        warnings: list[str] = []
        for gpu in self.gpus:
            sampled_j = _integrate([(t, i if i is not None else a) for t, a, i in gpu.samples])
            counter_j = None
            if gpu.counter_supported and not gpu.error:
                try:
                    end_counter = self._read_counter(gpu)
                    if end_counter is not None:
                        counter_j = (end_counter - gpu.start_counter_mj) / 1000.0
                except self.nvml.NVMLError as exc:
                    gpu.error = f"GPU {gpu.index}: NVML error reading the energy counter: {exc}"
            powers = [w for _, a, i in gpu.samples if (w := i if i is not None else a) is not None]
            if counter_j is not None:
                joules, method = counter_j, "energy counter"
            elif gpu.error and powers:
                # The driver failed mid-window: the samples before the failure give the window's mean power.
                joules = sum(powers) / len(powers) * duration
                method = "mean sampled power x window (NVML failed mid-window)"
                warnings.append(f"{gpu.error}; energy for this window is the mean of {len(powers)} power samples "
                                "taken before it, times the window")
            elif sampled_j is not None:
                joules, method = sampled_j, "integrated power samples (energy counter unsupported)"
            else:
                raise MeterUnavailable(gpu.error or f"GPU {gpu.index}: NVML gave neither an energy counter nor power")
            disagreement = None
            if counter_j and sampled_j is not None:
                disagreement = (sampled_j - counter_j) / counter_j
                if abs(disagreement) > DISAGREEMENT_LIMIT:
                    warnings.append(f"GPU {gpu.index}: sampled power and the energy counter disagree by "
                                    f"{disagreement:+.0%} over {duration:.1f} s")
            if gpu.foreign_pids:
                warnings.append(f"GPU {gpu.index}: other processes ({', '.join(map(str, sorted(gpu.foreign_pids)))}) "
                                "used it during the window; their joules are counted")
            energy[f"gpu{gpu.index}"] = joules
            per_gpu[f"gpu{gpu.index}"] = {"method": method, "counter_j": counter_j, "sampled_j": sampled_j,
                                          "disagreement": disagreement, "samples": len(gpu.samples),
                                          "peak_memory_mb": gpu.peak_memory_mb}
        triton_end = self._triton_energy_j()
        triton_j = triton_end - self._triton_start if triton_end is not None and self._triton_start is not None else None
        memory = sum(g.peak_memory_mb for g in self.gpus)
        return Reading(meter=self.name, source=SOURCE_NVML, duration_s=duration, energy_j=energy, memory_mb=memory,
                       details={"gpus": per_gpu, "triton_nv_energy_consumption_j": triton_j, "warnings": warnings,
                                "memory_kind": "gpu"})

    def _triton_energy_j(self) -> float | None:
        """Triton's own nv_energy_consumption (J, summed over our GPUs) as a cross-check, where exported."""
        if not self.metrics_url:
            return None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as resp:
                text = resp.read(METRICS_MAX_BYTES).decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return None
        return parse_triton_energy_j(text)

    def close(self) -> None:
        """Stop the sampling thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


METRICS_MAX_BYTES = 4 << 20  # a Prometheus page larger than this is not Triton's


def parse_triton_energy_j(text: str) -> float | None:
    """Sum of nv_energy_consumption samples (J) in a Prometheus text page; None when absent or malformed.

    A cross-check only, so a malformed page (bad number, NaN, negative, truncated line) disables it rather than
    failing the trial.
    """
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith("nv_energy_consumption{"):
            continue
        _, _, tail = line.rpartition("}")
        parts = tail.split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            return None
        if not math.isfinite(value) or value < 0:
            return None
        total += value
        found = True
    return total if found else None


def _integrate(samples: list[tuple[float, float | None]]) -> float | None:
    """Trapezoidal integral of watts over seconds -> joules (None without two samples)."""
    points = [(t, w) for t, w in samples if w is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(points, points[1:], strict=False))
