"""Per-request records (send, done, ok) from any load engine, and their binning into the bench's wall-clock windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tuner.errors import LoadToolError
from tuner.load import MAX_ERROR_SAMPLES, WindowStats


@dataclass(frozen=True)
class RequestRecords:
    """Requests as parallel arrays: wall-clock send and completion times (ns, time.time_ns()) and success.

    An engine whose record of the requests was damaged (perf_analyzer's export cut short) returns what it could read,
    with `damage` (one line naming what and where) and, when requests may be missing, `complete_until_ns`: every
    request that completed before it is in the records; later ones may not be.
    """

    send_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    done_ns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    ok: np.ndarray = field(default_factory=lambda: np.empty(0, np.bool_))
    errors: tuple[str, ...] = ()
    damage: str = ""
    complete_until_ns: int | None = None  # None: no request is missing (wall-clock ns otherwise)

    def __post_init__(self) -> None:
        if not len(self.send_ns) == len(self.done_ns) == len(self.ok):
            raise ValueError("send_ns, done_ns and ok must have the same length")

    def __len__(self) -> int:
        return len(self.done_ns)

    def covers(self, end_ns: int) -> bool:
        """True when every request that completed before end_ns (wall-clock ns) is in the records."""
        return self.complete_until_ns is None or end_ns <= self.complete_until_ns

    @staticmethod
    def merge(parts: list[RequestRecords]) -> RequestRecords:
        """All records of several workers or drains, exactly (concatenated, nothing averaged); damage is kept."""
        parts = [p for p in parts if len(p) or p.errors or p.damage]
        if not parts:
            return RequestRecords()
        errors = tuple(dict.fromkeys(e for p in parts for e in p.errors))[:MAX_ERROR_SAMPLES]
        damage = "; ".join(dict.fromkeys(p.damage for p in parts if p.damage))
        until = [p.complete_until_ns for p in parts if p.complete_until_ns is not None]
        return RequestRecords(np.concatenate([p.send_ns for p in parts]).astype(np.int64, copy=False),
                              np.concatenate([p.done_ns for p in parts]).astype(np.int64, copy=False),
                              np.concatenate([p.ok for p in parts]).astype(np.bool_, copy=False), errors,
                              damage, min(until) if until else None)


def bin_window(records: RequestRecords, start_ns: int, end_ns: int) -> WindowStats:
    """The requests that completed in [start_ns, end_ns): latencies of the successes (ms), failures, errors, and how
    many were sent in it; LoadToolError (the damage) when the records may miss some of them."""
    if not records.covers(end_ns):
        raise LoadToolError(records.damage)
    inside = (records.done_ns >= start_ns) & (records.done_ns < end_ns)
    good = inside & records.ok
    latencies_ms = (records.done_ns[good] - records.send_ns[good]) / 1e6
    failures = int(np.count_nonzero(inside & ~records.ok))
    sent = int(np.count_nonzero((records.send_ns >= start_ns) & (records.send_ns < end_ns)))
    return WindowStats(duration_s=(end_ns - start_ns) / 1e9, latencies_ms=latencies_ms.tolist(), failure_count=failures,
                       errors=list(records.errors) if failures else [], sent_count=sent)


def covered_windows(records: RequestRecords, spans: list[tuple[int, int]], needed: int) -> tuple[int, str | None]:
    """How many of the windows (wall-clock (start, end) ns, in order) the records cover, and a warning when the
    records are damaged; LoadToolError (the damage) when fewer than `needed` (or all, if fewer) are covered."""
    if not records.damage:
        return len(spans), None
    kept = 0
    while kept < len(spans) and records.covers(spans[kept][1]):
        kept += 1
    if kept < min(needed, len(spans)):
        raise LoadToolError(records.damage)
    if kept == len(spans):
        return kept, f"{records.damage}; every request of the measured windows was read before it"
    return kept, (f"{records.damage}; measured from the {kept} window{'s' if kept > 1 else ''} it covers "
                  f"({len(spans) - kept} after it dropped)")
