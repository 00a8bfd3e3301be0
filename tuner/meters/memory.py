"""Server memory: peak RSS of the server's process tree, sampled by a background thread during a window."""

from __future__ import annotations

import threading
import time

import psutil

from tuner.meters.base import SOURCE_RSS, Reading, process_tree

SAMPLE_INTERVAL_S = 0.2


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants, in MB (10^6 bytes)."""
    total = 0
    for proc in process_tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 1e6


class MemoryMeter:
    """Peak RSS (MB) of the server tree over the window."""

    name = "memory"
    measures_energy = False
    min_window_s = 0.0
    preferred_window_s = 2.0

    def __init__(self, pid: int, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak_mb = max(self._peak_mb, tree_rss_mb(self.pid))

    def begin(self) -> None:
        """Start sampling."""
        self.close()
        self._stop.clear()
        self._peak_mb = tree_rss_mb(self.pid)
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="greentune-memory", daemon=True)
        self._thread.start()

    def end(self) -> Reading:
        """Stop sampling; the reading's memory_mb is the peak seen."""
        self.close()
        self._peak_mb = max(self._peak_mb, tree_rss_mb(self.pid))
        return Reading(
            meter=self.name, source=SOURCE_RSS, duration_s=time.perf_counter() - self._start, memory_mb=self._peak_mb
        )

    def close(self) -> None:
        """Stop the sampling thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
