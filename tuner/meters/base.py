"""The meter contract (zeus-style windows): begin() ... end() -> Reading over exactly the measured span."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

# Where a figure came from; every printed joule carries one of these.
SOURCE_ESTIMATED = "estimated"
SOURCE_NVML = "measured by NVML"
SOURCE_RAPL = "read from RAPL"
SOURCE_RSS = "RSS of server processes"
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


class ResourceProbe(Protocol):
    """Where a server's CPU time and memory are read: its process tree here, or its container's stats."""

    memory_source: str
    pids_visible: bool  # whether pids() gives host pids (to tell the server's GPU processes from others)

    def cpu_seconds(self) -> float:
        """Cumulative CPU seconds used by the server (user + system), including exited children."""
        ...

    def memory_mb(self) -> float:
        """The server's current memory in MB (10^6 bytes)."""
        ...

    def pids(self) -> set[int]:
        """Host pids of the server's processes (empty where they are not visible)."""
        ...


class ProcessTreeProbe:
    """A local server: the tritonserver process and its Python-backend stubs."""

    memory_source = SOURCE_RSS
    pids_visible = True

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """CPU seconds of the live tree plus children the server already reaped."""
        total = 0.0
        for proc in process_tree(self.pid):
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
            if proc.pid == self.pid:
                total += times.children_user + times.children_system
        return total

    def memory_mb(self) -> float:
        """Resident memory of the tree."""
        total = 0
        for proc in process_tree(self.pid):
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total / 1e6

    def pids(self) -> set[int]:
        """The tree's pids."""
        return {p.pid for p in process_tree(self.pid)}


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants (the server and its backend stubs)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
