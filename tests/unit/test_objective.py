from __future__ import annotations

import pytest

from tuner.errors import BadInput
from tuner.objective import (
    FAILED_VIOLATION,
    Constraints,
    best_trial,
    closest_trial,
    pareto_front,
    score,
    violations,
)
from tuner.results import Measurement, Spread, TrialConfig, TrialResult


def measurement(ipj: float, p99: float, tput: float, memory: float | None = 100.0, sd: float = 0.0) -> Measurement:
    return Measurement(
        config=TrialConfig(), load={"mode": "concurrency", "concurrency": 4},
        throughput_per_s=Spread(tput, 0.0, 3), p50_ms=p99 / 2, p95_ms=p99 * 0.9, p99_ms=Spread(p99, 0.0, 3),
        energy_j=tput * 6 / ipj, energy_source="estimated", energy_domains_j={"cpu": tput * 6 / ipj},
        inferences_per_j=Spread(ipj, sd, 3), memory_mb=memory, memory_source="RSS of server processes",
        success_count=int(tput * 6), failure_count=0, duration_s=6.0, stable=True,
    )


C = Constraints(min_throughput_per_s=100, max_p99_ms=10, max_memory_mb=500)


def result(number, m, constraints=C):
    return TrialResult(number, TrialConfig(instance_count=number + 1), m, None, violations(m, constraints))


def test_violations_are_relative_and_signed():
    v = violations(measurement(50, p99=12, tput=90, memory=250), C)
    assert v["max_p99_ms"] == pytest.approx(0.2)
    assert v["min_throughput"] == pytest.approx(0.1)
    assert v["max_memory_mb"] == pytest.approx(-0.5)
    assert v["failed"] == 0.0


def test_failed_and_unmeasured_memory_get_large_violation():
    assert set(violations(None, C).values()) == {FAILED_VIOLATION}
    assert violations(measurement(50, 5, 200, memory=None), C)["max_memory_mb"] == FAILED_VIOLATION
    assert score(None) == 0.0


def test_constraints_merge_flags_over_space_and_validate():
    merged = Constraints.merge({"max_p99_ms": 50.0, "min_throughput": 10.0}, max_p99_ms=20.0, min_throughput=None)
    assert merged.max_p99_ms == 20.0 and merged.min_throughput_per_s == 10.0
    with pytest.raises(BadInput, match="--max-p99-ms: expected a positive number"):
        Constraints(max_p99_ms=0)


def test_best_is_feasible_max_and_never_failed():
    results = [
        result(0, measurement(50, 5, 200)),
        result(1, measurement(90, 15, 300)),  # more efficient but breaks p99
        result(2, measurement(70, 8, 150)),
        TrialResult(3, TrialConfig(), None, "Triton refused to load mlp", violations(None, C)),
    ]
    assert best_trial(results).number == 2
    closest, constraint = closest_trial(results[1:2])
    assert closest.number == 1 and constraint == "max_p99_ms"


def test_pareto_front():
    results = [
        result(0, measurement(50, 5, 200)),   # lowest p99
        result(1, measurement(80, 8, 150)),   # best inferences/J
        result(2, measurement(40, 9, 140)),   # dominated by 0
        result(3, measurement(60, 9, 400)),   # best throughput
        result(4, measurement(99, 30, 500)),  # infeasible: excluded
    ]
    assert pareto_front(results) == [0, 1, 3]


def test_grid_sampler_runs_to_exhaustion_in_an_ask_tell_loop():
    import optuna

    from tuner.space import parse_space
    from tuner.study import AskTellGridSampler

    space = parse_space({"knobs": {"instance_count": {"type": "int", "low": 1, "high": 3}}}, "s.yaml")
    sampler = AskTellGridSampler(space.grid(), seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []
    while not sampler.is_exhausted(study):
        trial = study.ask()
        seen.append(space.sample(trial).instance_count)
        trial.set_constraint("failed", 0.0)
        study.tell(trial, 1.0)  # optuna's own GridSampler would raise here on the last point
    assert sorted(seen) == [1, 2, 3]
