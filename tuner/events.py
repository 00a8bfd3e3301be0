"""Progress events: small frozen values the library reports through a callback and only the CLI renders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuner.results import TrialResult


@dataclass(frozen=True)
class ModelLoading:
    """A config is being loaded into the server."""

    config: str


@dataclass(frozen=True)
class IdleMeasuring:
    """Idle power is being measured (server up, model loaded, no load) for this long."""

    seconds: float


@dataclass(frozen=True)
class EngineStarted:
    """The load engine that drives this measurement (builtin or perf_analyzer)."""

    engine: str


@dataclass(frozen=True)
class WarmingUp:
    """Requests run unmeasured for this long before the first window."""

    seconds: float


@dataclass(frozen=True)
class WindowMeasured:
    """One measurement window finished."""

    index: int
    max_windows: int
    throughput_per_s: float
    p99_ms: float


@dataclass(frozen=True)
class ConcurrencyProbed:
    """--concurrency auto tried one concurrency."""

    concurrency: int
    throughput_per_s: float
    p99_ms: float


@dataclass(frozen=True)
class TrialStarted:
    """The search starts measuring a trial."""

    number: int
    config: str
    baseline: bool


@dataclass(frozen=True)
class TrialFinished:
    """A trial was measured (or failed) and saved; best is the best feasible trial so far."""

    result: TrialResult
    best: TrialResult | None
    measured: int
    total: int


@dataclass(frozen=True)
class TrialRetried:
    """The load tool failed during a trial (not the config): the same config is measured once more."""

    number: int
    reason: str


@dataclass(frozen=True)
class ServerRestarted:
    """The server died during a trial and was started again (count: restarts so far)."""

    count: int


@dataclass(frozen=True)
class TrialsRecovered:
    """Trials left running by a killed earlier run were marked failed and queued again."""

    count: int


@dataclass(frozen=True)
class RepeatStarted:
    """--repeats: a top config is measured once more."""

    number: int
    config: str


@dataclass(frozen=True)
class RepeatFailed:
    """--repeats: a repeat measurement failed; the runs so far are pooled."""

    number: int
    reason: str


@dataclass(frozen=True)
class ImagePulling:
    """The docker launcher pulls its image: one layer's status and bytes so far (0 when unknown)."""

    image: str
    status: str
    layer: str
    current_bytes: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class Warned:
    """Something the user should know before the results, e.g. --parallel on CPU: servers share the cores."""

    text: str


@dataclass(frozen=True)
class PairMeasured:
    """greentune compare: a baseline/candidate pair is measured; the energy-per-inference ratio so far (nan: n < 2)."""

    index: int
    order: str  # "AB" (baseline first) or "BA"
    ratio: float
    low: float
    high: float


Event = (ModelLoading | IdleMeasuring | EngineStarted | WarmingUp | WindowMeasured | ConcurrencyProbed | TrialStarted
         | TrialFinished | TrialRetried | ServerRestarted | TrialsRecovered | RepeatStarted | RepeatFailed | ImagePulling
         | Warned | PairMeasured)
Progress = Callable[[Event], None]


def emit(progress: Progress | None, event: Event) -> None:
    """Report an event when someone listens."""
    if progress is not None:
        progress(event)
