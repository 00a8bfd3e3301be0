"""Where a server's CPU time and memory are read: its process tree on this machine, or its container's stats."""

from __future__ import annotations

from typing import Any, Protocol

import psutil

# Where a probe's memory figure came from (Measurement.memory_source, beside the meters' sources in meters/base.py).
SOURCE_RSS = "RSS of server processes"
SOURCE_CONTAINER = "container memory (Docker stats)"


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


class ContainerProbe:
    """CPU time and memory of a container, from the Engine API's stats."""

    memory_source = SOURCE_CONTAINER
    pids_visible = False

    def __init__(self, container: Any) -> None:
        self.container = container

    def _stats(self) -> dict[str, Any]:
        return dict(self.container.stats(stream=False))

    def cpu_seconds(self) -> float:
        """Cumulative CPU seconds of every process in the container."""
        return float(self._stats().get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0)) / 1e9

    def memory_mb(self) -> float:
        """The container's memory usage in MB."""
        return float(self._stats().get("memory_stats", {}).get("usage", 0)) / 1e6

    def pids(self) -> set[int]:
        """Host pids are not visible through the API."""
        return set()
