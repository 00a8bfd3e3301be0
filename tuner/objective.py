"""Measurement -> inferences per joule and constraint violations; the Pareto front; choosing the best. Pure."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tuner.errors import BadInput
from tuner.results import Measurement, TrialResult, hardware_group

FAILED_VIOLATION = 1000.0  # a refused or failing config: far outside every constraint, so samplers avoid its region
CONSTRAINT_NAMES = ("min_throughput", "max_p99_ms", "max_memory_mb", "request_rate", "failed")
# Open loop (--request-rate): the config must complete the asked rate; delivering less by more than this breaks the
# "request_rate" constraint (the client's own shortfall is a failed measurement instead: tuner/measure.py).
REQUEST_RATE_TOLERANCE = 0.05
# --objective: what the search maximises under the constraints, and how summaries and reports name it.
OBJECTIVES = {
    "efficiency": "maximize inferences per joule (mean over stable windows)",
    "throughput": "maximize inferences per second (mean over stable windows)",
}


@dataclass(frozen=True)
class Constraints:
    """What the service needs: min throughput (infer/s), max p99 latency (ms), max memory (MB)."""

    min_throughput_per_s: float | None = None
    max_p99_ms: float | None = None
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (("--min-throughput", self.min_throughput_per_s), ("--max-p99-ms", self.max_p99_ms),
                            ("--max-memory-mb", self.max_memory_mb)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise BadInput(f"{flag}: expected a positive number, got {value}")

    @classmethod
    def merge(cls, from_space: dict[str, float], **flags: float | None) -> Constraints:
        """Flags override the search space's constraints."""
        def pick(key: str, flag: float | None) -> float | None:
            return flag if flag is not None else from_space.get(key)

        return cls(
            min_throughput_per_s=pick("min_throughput", flags.get("min_throughput")),
            max_p99_ms=pick("max_p99_ms", flags.get("max_p99_ms")),
            max_memory_mb=pick("max_memory_mb", flags.get("max_memory_mb")),
        )

    def to_dict(self) -> dict[str, float | None]:
        """JSON-able dict with units in the keys."""
        return {"min_throughput_per_s": self.min_throughput_per_s, "max_p99_ms": self.max_p99_ms,
                "max_memory_mb": self.max_memory_mb}


def violations(measurement: Measurement | None, constraints: Constraints) -> dict[str, float]:
    """Relative violation per constraint (<= 0 holds, > 0 is broken by that fraction); failures get a large one."""
    if measurement is None:
        return {name: FAILED_VIOLATION for name in CONSTRAINT_NAMES}
    out = {"failed": 0.0}
    if constraints.min_throughput_per_s is not None:
        limit = constraints.min_throughput_per_s
        out["min_throughput"] = (limit - measurement.throughput_per_s.mean) / limit
    if constraints.max_p99_ms is not None:
        limit = constraints.max_p99_ms
        out["max_p99_ms"] = (measurement.p99_ms.mean - limit) / limit
    if constraints.max_memory_mb is not None:
        limit = constraints.max_memory_mb
        memory = measurement.memory_mb
        # Memory that could not be measured cannot be shown to fit.
        out["max_memory_mb"] = FAILED_VIOLATION if memory is None else (memory - limit) / limit
    asked = asked_rate_per_s(measurement)
    if asked is not None:
        limit = (1 - REQUEST_RATE_TOLERANCE) * asked
        out["request_rate"] = (limit - measurement.throughput_per_s.mean) / limit
    return {k: v if math.isfinite(v) else FAILED_VIOLATION for k, v in out.items()}


def set_violations(measurement: Measurement | None, constraints: Constraints,
                   members: dict[str, Constraints]) -> dict[str, float]:
    """A set of models on one server: the server's limits (memory) on the set's figures, and each model's own limits
    on its own figures, named MODEL/constraint (e.g. "mlp/max_p99_ms")."""
    out = violations(measurement, constraints)
    if measurement is None:
        return out
    for model, limits in members.items():
        own = measurement.members.get(model)
        for name, amount in violations(own, limits).items():
            if name != "failed":
                out[f"{model}/{name}"] = amount
    return out


def asked_rate_per_s(measurement: Measurement) -> float | None:
    """The open-loop rate the measurement was asked for (requests/s); None under a closed loop."""
    if measurement.load.get("mode") != "request_rate":
        return None
    rate = measurement.load.get("request_rate_per_s")
    return float(rate) if isinstance(rate, int | float) and rate > 0 else None


def score(measurement: Measurement | None) -> float:
    """The objective to maximise: mean inferences per joule (0 for a failed or unmetered trial)."""
    if measurement is None:
        return 0.0
    value = measurement.inferences_per_j.mean
    return value if math.isfinite(value) else 0.0


def check_objective(objective: str) -> str:
    """The objective's name, or BadInput naming --objective and the valid ones."""
    if objective not in OBJECTIVES:
        raise BadInput(f"--objective {objective}: expected one of {', '.join(OBJECTIVES)}")
    return objective


def objective_value(measurement: Measurement | None, objective: str = "efficiency") -> float:
    """The study's value for a trial: inferences per joule (efficiency) or per second (throughput); 0 if failed."""
    if check_objective(objective) == "efficiency":
        return score(measurement)
    if measurement is None:
        return 0.0
    value = measurement.throughput_per_s.mean
    return value if math.isfinite(value) else 0.0



def window_values(measurement: Measurement, objective: str) -> list[float]:
    """The objective per recorded window: inferences per joule (efficiency) or per second (throughput)."""
    if objective == "throughput":
        return [w.throughput_per_s for w in measurement.windows]
    return [w.success_count / w.energy_j for w in measurement.windows if w.energy_j]

def best_trial(results: list[TrialResult], objective: str = "efficiency") -> TrialResult | None:
    """The feasible trial that maximises the objective: most inferences per joule (ties: higher throughput, then
    lower number) or, for "throughput", the fastest (see fastest_trial)."""
    if check_objective(objective) == "throughput":
        return fastest_trial(results)
    feasible = [r for r in results if r.feasible]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (score(r.measurement), _throughput(r), -r.number))


def fastest_trial(results: list[TrialResult]) -> TrialResult | None:
    """The feasible trial with the highest mean throughput (ties: more inferences per joule, then lower number)."""
    feasible = [r for r in results if r.feasible and r.measurement is not None]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (_throughput(r), score(r.measurement), -r.number))


@dataclass(frozen=True)
class PriceOfSpeed:
    """What the fastest feasible config costs in energy over the most efficient one (same energy source)."""

    efficient_trial: int
    fastest_trial: int
    same_config: bool
    extra_energy_per_inference_mj: float | None  # fastest minus most efficient; None when energy was not metered
    extra_power_w: float | None  # mean power over the measured windows, fastest minus most efficient
    extra_throughput_per_s: float
    energy_source: str
    energy_accounting: str  # "total" or "dynamic" (idle power subtracted): the watts are on the same basis

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with units in the keys."""
        return dataclasses.asdict(self)


def price_of_speed(efficient: TrialResult | None, fastest: TrialResult | None) -> PriceOfSpeed | None:
    """Extra mJ per inference and extra watts of the fastest feasible config over the most efficient one."""
    if efficient is None or fastest is None or efficient.measurement is None or fastest.measurement is None:
        return None
    e, f = efficient.measurement, fastest.measurement
    e_j, f_j = e.energy_per_inference_j, f.energy_per_inference_j
    e_w, f_w = mean_power_w(e), mean_power_w(f)
    sources = sorted({e.energy_source, f.energy_source})
    return PriceOfSpeed(
        efficient_trial=efficient.number, fastest_trial=fastest.number,
        same_config=efficient.number == fastest.number,
        extra_energy_per_inference_mj=None if e_j is None or f_j is None else (f_j - e_j) * 1000,
        extra_power_w=None if e_w is None or f_w is None else f_w - e_w,
        extra_throughput_per_s=f.throughput_per_s.mean - e.throughput_per_s.mean,
        energy_source=" / ".join(sources),
        energy_accounting=" / ".join(sorted({e.energy_accounting, f.energy_accounting})),
    )


def mean_power_w(measurement: Measurement) -> float | None:
    """Mean power over the measured windows in W (energy as accounted / duration); None when not metered."""
    if measurement.energy_j is None or not measurement.duration_s > 0:
        return None
    return measurement.energy_j / measurement.duration_s


def closest_trial(results: list[TrialResult]) -> tuple[TrialResult, str] | None:
    """The measured trial nearest to feasibility and the constraint it breaks most (for exit 3); a screened trial
    only where it breaks one (one screened as worse than the best broke none it could show)."""
    measured = [r for r in results if not r.failed and r.violations
                and (not r.screened or any(v > 0 for v in r.violations.values()))]
    if not measured:
        return None
    closest = min(measured, key=lambda r: sum(max(0.0, v) for v in r.violations.values()))
    worst = max(closest.violations.items(), key=lambda kv: kv[1])
    return closest, worst[0]


def pareto_front(results: list[TrialResult]) -> list[int]:
    """Trial numbers of feasible trials not dominated on (inferences/J up, p99 down, throughput up) by a trial on
    the same hardware (GPU model + meters: joules on other hardware do not compare)."""
    points = []
    for r in results:
        if r.feasible and r.measurement is not None:
            m = r.measurement
            points.append((r.number, hardware_group(r), score(m), m.p99_ms.mean, m.throughput_per_s.mean))
    front = []
    for number, group, ipj, p99, tput in points:
        dominated = any(
            o_ipj >= ipj and o_p99 <= p99 and o_tput >= tput and (o_ipj > ipj or o_p99 < p99 or o_tput > tput)
            for _, o_group, o_ipj, o_p99, o_tput in points if o_group == group
        )
        if not dominated:
            front.append(number)
    return sorted(front)


def overlaps(a: Measurement, b: Measurement) -> bool:
    """True when the 95% confidence intervals of inferences per joule overlap: a tie for reports."""
    lo_a, hi_a = a.inferences_per_j.interval()
    lo_b, hi_b = b.inferences_per_j.interval()
    return lo_a <= hi_b and lo_b <= hi_a


def ties_with(best: TrialResult, results: list[TrialResult]) -> list[int]:
    """Feasible trials on the best's hardware whose inferences-per-joule interval overlaps the best's (tied)."""
    if best.measurement is None:
        return []
    return [r.number for r in results if r.feasible and r.number != best.number and r.measurement is not None
            and hardware_group(r) == hardware_group(best)
            and overlaps(best.measurement, r.measurement)]


def _throughput(result: TrialResult) -> float:
    return result.measurement.throughput_per_s.mean if result.measurement else 0.0
