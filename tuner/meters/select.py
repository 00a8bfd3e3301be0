"""Pick the meters for a server: energy (auto -> NVML, RAPL, estimate as they become available) and memory."""

from __future__ import annotations

from tuner.errors import BadInput, MeterUnavailable
from tuner.meters.base import Meter
from tuner.meters.estimate import EstimateMeter
from tuner.meters.memory import MemoryMeter
from tuner.server.base import Server

ENERGY_METERS = ("auto", "estimate")


def select_meters(server: Server, energy_meter: str = "auto", cpu_tdp_watts: float | None = None) -> list[Meter]:
    """Meters for this server; a server greentune did not start has no local process to meter."""
    if energy_meter not in ENERGY_METERS:
        raise BadInput(f"--energy-meter {energy_meter}: expected one of {', '.join(ENERGY_METERS)}")
    if cpu_tdp_watts is not None and not cpu_tdp_watts > 0:
        raise BadInput(f"--cpu-tdp-watts: expected a positive number of watts, got {cpu_tdp_watts}")
    if server.pid is None:
        if energy_meter != "auto":
            raise MeterUnavailable(
                f"--energy-meter {energy_meter}: needs the server's process on this machine; "
                "a remote server can only be measured for load, not energy"
            )
        return []
    return [EstimateMeter(server.pid, cpu_tdp_watts), MemoryMeter(server.pid)]
