"""The README's statistics, by hand: 95% CIs from exact Student's t, ties by touching intervals, within_spread."""

from __future__ import annotations

import math

import pytest

from tuner.objective import Constraints, overlaps, ties_with, violations
from tuner.outputs import savings
from tuner.results import Measurement, Spread, TrialConfig, TrialResult, t_quantile_95

# Two-sided 95% points (the 0.975 quantile) from published Student's t tables, to the tables' 4 decimals.
PUBLISHED_T95 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 11: 2.2010,
                 12: 2.1788, 14: 2.1448, 19: 2.0930, 29: 2.0452, 30: 2.0423, 40: 2.0211, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize(("df", "published"), sorted(PUBLISHED_T95.items()))
def test_t_quantile_matches_published_tables(df, published):
    assert t_quantile_95(df) == pytest.approx(published, abs=6e-5)


def test_t_quantile_tends_to_the_normal_point_from_above():
    values = [t_quantile_95(df) for df in (30, 31, 50, 100, 1000, 100_000)]
    assert values == sorted(values, reverse=True)  # never the normal 1.96 early: t is wider for every finite df
    assert values[-1] == pytest.approx(1.959964, abs=1e-4) and all(v > 1.959964 for v in values)


def test_ci95_of_ten_twelve_fourteen_by_hand():
    spread = Spread.of([10.0, 12.0, 14.0])
    assert (spread.mean, spread.sd, spread.n) == (12.0, 2.0, 3)
    half = 4.302653 * 2 / math.sqrt(3)  # t(0.975, df=2) x sd / sqrt(n) = 4.968
    assert spread.ci95 == pytest.approx(half, rel=1e-6)
    low, high = spread.interval()
    assert (low, high) == (pytest.approx(12 - half, rel=1e-6), pytest.approx(12 + half, rel=1e-6))
    assert spread.to_dict()["ci95"] == pytest.approx(half, rel=1e-6)


def test_ci95_at_eleven_and_above_thirty_degrees_of_freedom():
    # 12 windows: df = 11, t = 2.201 (a table that reuses df = 10's 2.228 reads 1.2% wide)
    assert Spread(100.0, 3.0, 12).ci95 == pytest.approx(2.200985 * 3.0 / math.sqrt(12), rel=1e-6)
    # 41 windows (e.g. pooled repeats): df = 40, t = 2.021 (not the normal 1.96, which reads 3% narrow)
    assert Spread(100.0, 3.0, 41).ci95 == pytest.approx(2.021075 * 3.0 / math.sqrt(41), rel=1e-6)


def test_no_interval_below_two_values():
    assert math.isnan(Spread.of([5.0]).ci95) and Spread.of([5.0]).interval() == (5.0, 5.0)
    assert math.isnan(Spread.of([]).ci95)


def measured(ipj: Spread, p99_ms: float = 5.0, number: int = 0) -> Measurement:
    windows = ipj.n or 1
    return Measurement(
        config=TrialConfig(instance_count=number + 1), load={"mode": "concurrency", "concurrency": 4},
        throughput_per_s=Spread(200.0, 0.0, windows), p50_ms=p99_ms / 2, p95_ms=p99_ms * 0.9,
        p99_ms=Spread(p99_ms, 0.0, windows), energy_j=1200.0 / ipj.mean, energy_source="estimated",
        energy_domains_j={"cpu": 1200.0 / ipj.mean}, inferences_per_j=ipj, memory_mb=100.0,
        memory_source="RSS of server processes", success_count=1200, failure_count=0, duration_s=6.0, stable=True,
    )


LIMITS = Constraints(max_p99_ms=10.0)


def trial(number: int, ipj: Spread, p99_ms: float = 5.0) -> TrialResult:
    m = measured(ipj, p99_ms, number)
    return TrialResult(number, m.config, m, None, violations(m, LIMITS))


def touching_pair() -> tuple[Spread, Spread]:
    """Two spreads whose 95% intervals meet at exactly one point (upper end of a == lower end of b)."""
    a = Spread(10.0, 2.0, 3)
    b = Spread(a.interval()[1] + a.ci95, 2.0, 3)
    assert b.interval()[0] == a.interval()[1]  # the test's premise, exactly in floating point
    return a, b


def test_touching_intervals_tie_and_separate_ones_do_not():
    a, b = touching_pair()
    assert overlaps(measured(a), measured(b)) and overlaps(measured(b), measured(a))
    apart = Spread(b.mean + 1e-9, b.sd, b.n)
    assert apart.interval()[0] > a.interval()[1]
    assert not overlaps(measured(a), measured(apart)) and not overlaps(measured(apart), measured(a))
    # a point estimate (one window) inside the other's interval ties; outside it does not
    assert overlaps(measured(a), measured(Spread(a.interval()[1], 0.0, 1)))
    assert not overlaps(measured(a), measured(Spread(a.interval()[1] + 1e-9, 0.0, 1)))


def test_ties_with_lists_feasible_overlapping_trials_only_never_the_best_or_infeasible():
    low, high = touching_pair()
    best = trial(0, high)
    results = [
        best,
        trial(1, low),  # touches the best's interval: a tie
        trial(2, Spread(high.mean - 0.5, 2.0, 3)),  # well inside: a tie
        trial(3, Spread(high.mean, 2.0, 3), p99_ms=12.0),  # overlaps but breaks --max-p99-ms: not a tie
        trial(4, Spread(low.mean - 1e-6, 2.0, 3)),  # just below touching: apart
        TrialResult(5, TrialConfig(instance_count=9), None, "Triton refused it", violations(None, LIMITS)),
        trial(6, Spread(high.mean, 0.0, 1)),  # one window at the best's mean: inside
    ]
    assert not results[3].feasible and results[3].measurement is not None
    assert ties_with(best, results) == [1, 2, 6]
    assert ties_with(trial(0, high), [trial(0, high)]) == []  # the best never ties with itself


def test_within_spread_in_savings_is_the_interval_overlap():
    low, high = touching_pair()
    tied = savings(trial(1, high), trial(0, low))
    assert tied is not None and tied["within_spread"] is True
    chosen = Spread(high.mean + 1e-9, 2.0, 3)
    apart = savings(trial(1, chosen), trial(0, low))
    assert apart is not None and apart["within_spread"] is False
    # 1200 inferences on 1200/ipj joules: energy per inference is 1/ipj
    assert apart["energy_per_inference_j_baseline"] == pytest.approx(1 / low.mean)
    assert apart["energy_saved_percent"] == pytest.approx(100 * (1 - low.mean / chosen.mean))
