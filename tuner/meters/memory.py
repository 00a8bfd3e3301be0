"""Server memory: peak RSS of the server's process tree, sampled by a background thread during a window."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from tuner.meters.base import Reading

if TYPE_CHECKING:
    from tuner.server.probes import ResourceProbe

SAMPLE_INTERVAL_S = 0.2


class MemoryMeter:
    """Peak memory (MB) of the server (process-tree RSS, or the container's usage) over the window."""

    name = "memory"
    measures_energy = False
    min_window_s = 0.0
    preferred_window_s = 2.0

    def __init__(self, probe: ResourceProbe, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.probe = probe
        self.interval_s = interval_s
        self._peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._peak_mb = max(self._peak_mb, self._read())

    def _read(self) -> float:
        try:
            return self.probe.memory_mb()
        except Exception:  # a probe that fails once (container stats hiccup) must not kill the window
            return 0.0

    def begin(self) -> None:
        """Start sampling."""
        self.close()
        self._stop.clear()
        self._peak_mb = self._read()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="greentune-memory", daemon=True)
        self._thread.start()

    def end(self) -> Reading:
        """Stop sampling; the reading's memory_mb is the peak seen."""
        self.close()
        self._peak_mb = max(self._peak_mb, self._read())
        return Reading(
            meter=self.name, source=self.probe.memory_source, duration_s=time.perf_counter() - self._start, memory_mb=self._peak_mb
        )

    def close(self) -> None:
        """Stop the sampling thread."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
