"""The load a trial runs under (LoadSpec), what one window of it completed (WindowStats) and when windows are stable.

The engines in tuner/engines/ generate the load; this module knows no gRPC and no energy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tuner.errors import BadInput

MAX_ERROR_SAMPLES = 5
FAILURE_BACKOFF_S = 0.01


@dataclass(frozen=True)
class LoadSpec:
    """How hard the server is driven: closed loop at `concurrency`, or open loop at `request_rate_per_s`."""

    concurrency: int | None = 1
    request_rate_per_s: float | None = None
    request_timeout_s: float = 30.0
    max_outstanding: int = 512
    engine: str = "builtin"  # the load engine (tuner/engines): builtin or perf_analyzer
    perf_analyzer: Path | None = None  # --perf-analyzer PATH (else found on PATH or in the cache)
    run_s: float | None = None  # how long one engine run lasts at most (warm-up + windows); sizes what it records

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate_per_s is None):
            raise BadInput("give exactly one of --concurrency and --request-rate")
        if self.concurrency is not None and not 1 <= self.concurrency <= 4096:
            raise BadInput(f"--concurrency: expected 1 to 4096, got {self.concurrency}")
        if self.request_rate_per_s is not None and not self.request_rate_per_s > 0:
            raise BadInput(f"--request-rate: expected a positive number of requests per second, got {self.request_rate_per_s}")
        if not self.request_timeout_s > 0:
            raise BadInput(f"--request-timeout: expected positive seconds, got {self.request_timeout_s}")
        if self.engine not in ("builtin", "perf_analyzer"):
            raise BadInput(f"--load-generator {self.engine}: expected builtin or perf_analyzer (auto is resolved first)")
        if self.run_s is not None and not self.run_s > 0:
            raise ValueError(f"run_s: expected positive seconds, got {self.run_s}")

    def describe(self) -> dict[str, object]:
        """JSON-able description for results and reports."""
        if self.concurrency is not None:
            return {"mode": "concurrency", "concurrency": self.concurrency, "engine": self.engine}
        return {"mode": "request_rate", "request_rate_per_s": self.request_rate_per_s, "engine": self.engine}


@dataclass
class WindowStats:
    """What completed inside one window: latencies of successes, failures and a few error messages."""

    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    failure_count: int = 0
    errors: list[str] = field(default_factory=list)
    sent_count: int | None = None  # requests sent in the window (by send time, whenever they completed); None: unknown

    @property
    def success_count(self) -> int:
        """Successful requests completed in the window."""
        return len(self.latencies_ms)

    @property
    def throughput_per_s(self) -> float:
        """Successful inferences per second."""
        return self.success_count / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in ms (nan with no successes)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def is_stable(throughputs: list[float], p99s_ms: list[float], tolerance: float, count: int = 3) -> bool:
    """perf_analyzer's rule: the last `count` windows' throughput and p99 each lie within tolerance of their mean."""
    if len(throughputs) < count or len(p99s_ms) < count:
        return False
    for series in (throughputs[-count:], p99s_ms[-count:]):
        if any(not np.isfinite(v) for v in series):
            return False
        mean = float(np.mean(series))
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in series):
            return False
    return True
