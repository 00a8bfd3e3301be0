from __future__ import annotations

import pytest

from tuner.errors import BadInput
from tuner.objective import (
    FAILED_VIOLATION,
    Constraints,
    best_trial,
    closest_trial,
    fastest_trial,
    objective_value,
    pareto_front,
    price_of_speed,
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


@pytest.mark.parametrize("name", ["default", "cpu", "gpu"])
def test_the_grid_is_every_distinct_config_once_as_params_that_sample_back_to_it(name):
    import optuna

    from tuner.sampling import grid_params
    from tuner.space import builtin_space

    space = builtin_space(name).for_model(True)
    params = grid_params(space, seed=0)
    configs = [space.sample(optuna.trial.FixedTrial(p)) for p in params]
    assert sorted(c.key() for c in configs) == sorted(c.key() for c in space.grid_configs())  # each once
    assert params != grid_params(space, seed=1) and params == grid_params(space, seed=0)  # shuffled by the seed


# --objective efficiency|throughput: the two picks and the energy price of speed (pure, no server).

def test_fastest_trial_is_the_feasible_one_with_the_highest_throughput():
    slow_efficient = result(0, measurement(80, p99=5, tput=200))
    fast = result(1, measurement(40, p99=8, tput=400))
    faster_but_infeasible = result(2, measurement(30, p99=20, tput=900))  # breaks max_p99_ms
    failed = TrialResult(3, TrialConfig(instance_count=4), None, "server died", violations(None, C))
    results = [slow_efficient, fast, faster_but_infeasible, failed]
    assert fastest_trial(results) is fast
    assert best_trial(results) is slow_efficient
    assert best_trial(results, "efficiency") is slow_efficient
    assert best_trial(results, objective="throughput") is fast
    assert fastest_trial([faster_but_infeasible, failed]) is None
    assert fastest_trial([]) is None


def test_fastest_trial_breaks_throughput_ties_by_efficiency_then_number():
    a = result(3, measurement(40, p99=5, tput=300))
    b = result(1, measurement(60, p99=5, tput=300))
    c = result(2, measurement(60, p99=5, tput=300))
    assert fastest_trial([a, b, c]) is b


def test_objective_value_is_the_chosen_quantity_and_zero_for_failures():
    m = measurement(50, p99=5, tput=250)
    assert objective_value(m) == 50
    assert objective_value(m, "efficiency") == 50
    assert objective_value(m, "throughput") == 250
    assert objective_value(None, "throughput") == 0.0


def test_unknown_objective_is_bad_input_naming_the_flag():
    with pytest.raises(BadInput, match=r"--objective speed: expected one of efficiency, throughput"):
        best_trial([], objective="speed")


def test_price_of_speed_is_extra_millijoules_and_watts_of_the_fastest():
    efficient = result(0, measurement(100, p99=5, tput=200))  # 10 mJ/inference, 200 inferences/s -> 2 W
    fast = result(1, measurement(50, p99=5, tput=400))  # 20 mJ/inference, 400 inferences/s -> 8 W
    price = price_of_speed(efficient, fast)
    assert price is not None
    assert price.extra_energy_per_inference_mj == pytest.approx(10.0)
    assert price.extra_power_w == pytest.approx(8.0 - 2.0)
    assert price.extra_throughput_per_s == pytest.approx(200.0)
    assert (price.efficient_trial, price.fastest_trial, price.same_config) == (0, 1, False)
    assert price.energy_source == "estimated"
    assert price.to_dict()["extra_energy_per_inference_mj"] == pytest.approx(10.0)


def test_price_of_speed_when_one_config_is_both_picks_is_zero_and_same():
    only = result(0, measurement(100, p99=5, tput=200))
    price = price_of_speed(only, only)
    assert price is not None and price.same_config
    assert price.extra_energy_per_inference_mj == 0.0 and price.extra_power_w == 0.0
    assert price_of_speed(None, only) is None and price_of_speed(only, None) is None
