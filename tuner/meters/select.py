"""Pick the meters for a server: GPU energy (NVML) and CPU energy (RAPL, else estimate), plus memory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuner.errors import BadInput, MeterUnavailable
from tuner.meters import nvml as nvml_meter
from tuner.meters.base import Meter
from tuner.meters.estimate import EstimateMeter
from tuner.meters.memory import MemoryMeter
from tuner.meters.rapl import POWERCAP_ROOT, RaplMeter
from tuner.server.base import Server

ENERGY_METERS = ("auto", "nvml", "rapl", "estimate")


def select_meters(
    server: Server,
    energy_meter: str = "auto",
    cpu_tdp_watts: float | None = None,
    gpus: list[int] | None = None,
    powercap_root: Path = POWERCAP_ROOT,
) -> list[Meter]:
    """auto: NVML for the server's GPUs (if any) plus RAPL or, failing that, the estimate for the host CPU.

    nvml, rapl or estimate: that meter alone, or MeterUnavailable saying why. Memory is always metered where
    the server's process is local.
    """
    if energy_meter not in ENERGY_METERS:
        raise BadInput(f"--energy-meter {energy_meter}: expected one of {', '.join(ENERGY_METERS)}")
    if cpu_tdp_watts is not None and not cpu_tdp_watts > 0:
        raise BadInput(f"--cpu-tdp-watts: expected a positive number of watts, got {cpu_tdp_watts}")
    probe = server.probe
    local = probe is not None
    meters: list[Meter] = []

    if energy_meter in ("auto", "nvml"):
        try:
            count = nvml_meter.gpu_count() if energy_meter == "auto" else nvml_meter.nvml_module().nvmlDeviceGetCount()
            indices = gpus if gpus is not None else list(range(count))
            if indices and (local or energy_meter == "nvml"):
                # Only where the server's host pids are known can other processes on its GPUs be told apart.
                own_pids = probe.pids if probe is not None and probe.pids_visible else None
                meters.append(nvml_meter.NvmlMeter(indices, own_pids, server.metrics_url))
            elif energy_meter == "nvml":
                raise MeterUnavailable("--energy-meter nvml: NVML sees no GPU on this machine")
        except MeterUnavailable:
            if energy_meter == "nvml":
                raise
    if energy_meter == "rapl" or (energy_meter == "auto" and local):
        try:
            meters.append(RaplMeter(powercap_root))
        except MeterUnavailable:
            if energy_meter == "rapl":
                raise
    if energy_meter == "estimate" or (energy_meter == "auto" and local and not any(m.name == "rapl" for m in meters)):
        if probe is None:
            raise MeterUnavailable(
                f"--energy-meter {energy_meter}: the estimate needs the server's process on this machine; "
                "a remote server can be metered with --energy-meter nvml or rapl when it runs on this host"
            )
        meters.append(EstimateMeter(probe, cpu_tdp_watts))
    if probe is not None:
        meters.append(MemoryMeter(probe))
    return meters


@dataclass(frozen=True)
class MeterChoice:
    """--energy-meter, --cpu-tdp-watts and --gpus: which meters a server gets (picked again for each server)."""

    energy_meter: str = "auto"
    cpu_tdp_watts: float | None = None
    gpus: list[int] | None = None

    def select(self, server: Server) -> list[Meter]:
        """The meters for this server (see select_meters)."""
        return select_meters(server, self.energy_meter, self.cpu_tdp_watts, self.gpus)
