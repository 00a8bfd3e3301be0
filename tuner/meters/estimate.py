"""Estimated CPU energy for machines with no power counter: server CPU time x (TDP / cores) plus an idle share."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.meters.base import SOURCE_ESTIMATED, Reading

if TYPE_CHECKING:
    from tuner.server.probes import ResourceProbe

DEFAULT_WATTS_PER_CORE = 10.0
IDLE_FRACTION_OF_TDP = 0.2
# Rated TDP (W) of a few common server CPUs; anything else uses DEFAULT_WATTS_PER_CORE x logical cores.
TDP_TABLE_W = {
    r"EPYC 7763": 280.0,
    r"EPYC 9654": 360.0,
    r"EPYC 7B13": 240.0,
    r"Xeon.*Platinum 8480": 350.0,
    r"Xeon.*Platinum 8380": 270.0,
    r"Xeon.*Platinum 8275": 240.0,
    r"Xeon.*Gold 6348": 235.0,
}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, or 'unknown CPU'."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def default_tdp_w(model: str, logical_cores: int) -> tuple[float, str]:
    """TDP in watts for this CPU and how it was chosen (table or per-core default)."""
    for pattern, watts in TDP_TABLE_W.items():
        if re.search(pattern, model):
            return watts, f"table entry for {model}"
    return DEFAULT_WATTS_PER_CORE * logical_cores, f"default {DEFAULT_WATTS_PER_CORE:g} W x {logical_cores} logical cores"


def estimate_energy_j(cpu_s: float, wall_s: float, tdp_w: float, logical_cores: int, idle_fraction: float) -> float:
    """Joules: CPU seconds at TDP/cores each, plus the idle share of TDP over the wall time."""
    return cpu_s * (tdp_w / logical_cores) + wall_s * idle_fraction * tdp_w


class EstimateMeter:
    """CPU-time-based estimate over the server's process tree; every figure is labelled 'estimated'."""

    name = "estimate"
    measures_energy = True
    min_window_s = 0.0
    preferred_window_s = 2.0

    def __init__(
        self, probe: ResourceProbe, cpu_tdp_watts: float | None = None, idle_fraction: float = IDLE_FRACTION_OF_TDP
    ) -> None:
        self.probe = probe
        self.logical_cores = os.cpu_count() or 1
        self.cpu_model = cpu_model()
        if cpu_tdp_watts is not None:
            self.tdp_w, self.tdp_basis = float(cpu_tdp_watts), "--cpu-tdp-watts"
        else:
            self.tdp_w, self.tdp_basis = default_tdp_w(self.cpu_model, self.logical_cores)
        self.idle_fraction = idle_fraction
        self._start_cpu = 0.0
        self._start_wall = 0.0

    def begin(self) -> None:
        """Snapshot the tree's CPU time."""
        self._start_cpu = self.probe.cpu_seconds()
        self._start_wall = time.perf_counter()

    def end(self) -> Reading:
        """CPU seconds used since begin(), turned into estimated joules."""
        cpu_s = max(0.0, self.probe.cpu_seconds() - self._start_cpu)
        wall_s = time.perf_counter() - self._start_wall
        joules = estimate_energy_j(cpu_s, wall_s, self.tdp_w, self.logical_cores, self.idle_fraction)
        return Reading(
            meter=self.name,
            source=SOURCE_ESTIMATED,
            duration_s=wall_s,
            energy_j={"cpu": joules},
            details={
                "cpu_s": cpu_s,
                "tdp_w": self.tdp_w,
                "tdp_basis": self.tdp_basis,
                "logical_cores": self.logical_cores,
                "idle_fraction": self.idle_fraction,
                "cpu_model": self.cpu_model,
            },
        )

    def close(self) -> None:
        """Nothing to release."""
