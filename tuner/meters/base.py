"""The meter contract (zeus-style windows): begin() ... end() -> Reading over exactly the measured span."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Where a figure came from; every printed joule carries one of these (a memory figure may also carry a
# server probe's source: tuner/server/probes.py).
SOURCE_ESTIMATED = "estimated"
SOURCE_NVML = "measured by NVML"
SOURCE_RAPL = "read from RAPL"
SOURCE_UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Reading:
    """One meter's figures over one window: joules per domain and/or memory, with their source."""

    meter: str
    source: str
    duration_s: float
    energy_j: dict[str, float] = field(default_factory=dict)
    memory_mb: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Meter(Protocol):
    """A measuring device: begin() opens a window, end() closes it and returns the Reading; close() frees it."""

    name: str
    measures_energy: bool
    min_window_s: float  # shorter windows are lengthened to this (sensor limits)
    preferred_window_s: float  # the default window when this meter is in use

    def begin(self) -> None:
        """Open a measurement window."""
        ...

    def end(self) -> Reading:
        """Close the window and return what it measured."""
        ...

    def close(self) -> None:
        """Release resources (threads, handles)."""
        ...
