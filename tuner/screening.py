"""Screening, the bench's side: what each window showed while a trial runs, handed to a `screen` callback that may stop
the trial, and when those windows clearly break a constraint. Pure (tuner/pruning.py judges them against the study)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner.objective import Constraints, check_objective

P99_FAR_FACTOR = 2.0  # p99 (or its Little's-law stand-in) over this multiple of --max-p99-ms in every window: far over


@dataclass(frozen=True)
class ScreenWindow:
    """What one finished window showed while the trial runs (the final figures come from the records at the end)."""

    index: int  # 1-based, counted from the first window after warm-up
    duration_s: float
    inferences: float | None  # successful inferences (Triton's count for an engine reporting at exit; None: unknown)
    energy_j: float | None  # as accounted (idle power subtracted under 'dynamic'); None when not metered
    memory_mb: float | None
    p99_ms: float | None  # None: the engine reports latencies only at exit
    concurrency: int | None  # closed loop: requests kept in flight; None in open loop

    @property
    def throughput_per_s(self) -> float | None:
        """Successful inferences per second over the window; None when not counted."""
        return self.inferences / self.duration_s if self.inferences is not None and self.duration_s > 0 else None

    @property
    def inferences_per_j(self) -> float | None:
        """Successful inferences per joule over the window; None when not metered or not counted."""
        return self.inferences / self.energy_j if self.inferences is not None and self.energy_j else None

    @property
    def littles_latency_ms(self) -> float | None:
        """Closed loop: requests in flight / throughput, in ms (Little's law); None in open loop or with no throughput.

        It is the client's mean cycle: the mean latency plus the client's own time between a response and the next
        request, so it reaches the mean latency only where that gap is small next to it (an async client under load).
        """
        throughput = self.throughput_per_s
        if self.concurrency is None or throughput is None or not throughput > 0:
            return None
        return 1000.0 * self.concurrency / throughput


Screen = Callable[[Sequence[ScreenWindow]], str | None]  # the bench calls it after every window: a reason to stop


def window_value(window: ScreenWindow, objective: str) -> float | None:
    """The window's value of the objective: inferences per joule (efficiency) or per second (throughput)."""
    value = window.inferences_per_j if check_objective(objective) == "efficiency" else window.throughput_per_s
    return value if value is not None and math.isfinite(value) else None


def constraint_breach(windows: Sequence[ScreenWindow], constraints: Constraints,
                      far_factor: float = P99_FAR_FACTOR) -> str | None:
    """Why the windows so far clearly break a constraint, or None: memory over --max-memory-mb in the latest window,
    or p99 over far_factor x --max-p99-ms in every window (where the engine reports p99 only at exit: the
    Little's-law mean latency, requests in flight / throughput, in its place)."""
    if not windows:
        return None
    latest = windows[-1]
    limit_mb = constraints.max_memory_mb
    if limit_mb is not None and latest.memory_mb is not None and latest.memory_mb > limit_mb:
        return f"memory {latest.memory_mb:.0f} MB over --max-memory-mb {limit_mb:g} MB"
    limit_ms = constraints.max_p99_ms
    if limit_ms is None:
        return None
    far_ms = far_factor * limit_ms
    if all(w.p99_ms is not None and w.p99_ms > far_ms for w in windows):
        worst = min(w.p99_ms for w in windows if w.p99_ms is not None)
        return (f"p99 at least {worst:.1f} ms in every window, over {far_factor:g} x --max-p99-ms {limit_ms:g} ms")
    stand_ins = [w.littles_latency_ms if w.p99_ms is None else None for w in windows]
    if all(v is not None and v > far_ms for v in stand_ins):
        least = min(v for v in stand_ins if v is not None)
        return (f"mean latency by Little's law ({latest.concurrency} in flight / {latest.throughput_per_s or 0:.0f} infer/s) "
                f"at least {least:.1f} ms in every window, over {far_factor:g} x --max-p99-ms {limit_ms:g} ms "
                "(p99 is known only when the load tool exits)")
    return None
