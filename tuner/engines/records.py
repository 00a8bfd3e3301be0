"""Per-request records (send, done, ok) from any load engine, and their binning into the bench's wall-clock windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuner.load import MAX_ERROR_SAMPLES, WindowStats


@dataclass(frozen=True)
class RequestRecords:
    """Requests as parallel arrays: wall-clock send and completion times (ns, time.time_ns()) and success."""

    send_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    done_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ok: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))
    errors: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.send_ns) == len(self.done_ns) == len(self.ok):
            raise ValueError("send_ns, done_ns and ok must have the same length")

    def __len__(self) -> int:
        return len(self.done_ns)

    @staticmethod
    def merge(parts: list[RequestRecords]) -> RequestRecords:
        """All records of several workers or drains, exactly (concatenated, nothing averaged)."""
        parts = [p for p in parts if len(p) or p.errors]
        if not parts:
            return RequestRecords()
        errors = tuple(dict.fromkeys(e for p in parts for e in p.errors))[:MAX_ERROR_SAMPLES]
        return RequestRecords(np.concatenate([p.send_ns for p in parts]).astype(np.int64, copy=False),
                              np.concatenate([p.done_ns for p in parts]).astype(np.int64, copy=False),
                              np.concatenate([p.ok for p in parts]).astype(np.bool_, copy=False), errors)


def bin_window(records: RequestRecords, start_ns: int, end_ns: int) -> WindowStats:
    """The requests that completed in [start_ns, end_ns): latencies of the successes (ms), failures, errors."""
    inside = (records.done_ns >= start_ns) & (records.done_ns < end_ns)
    good = inside & records.ok
    latencies_ms = (records.done_ns[good] - records.send_ns[good]) / 1e6
    failures = int(np.count_nonzero(inside & ~records.ok))
    return WindowStats(duration_s=(end_ns - start_ns) / 1e9, latencies_ms=latencies_ms.tolist(), failure_count=failures,
                       errors=list(records.errors) if failures else [])
