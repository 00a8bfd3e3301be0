"""tuner/comparison.py: the paired ratio and its interval, the gate's decision on synthetic pairs with known effects
(seeded draws, so the rates below are exact for these seeds), constraints, compare.md and compare.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tuner.compare_words import render_markdown
from tuner.comparison import (
    INCONCLUSIVE,
    PASS,
    REGRESSION,
    STATISTICS_METHOD,
    Comparison,
    Pair,
    PairedRatio,
    decide,
)
from tuner.errors import EXIT_INCONCLUSIVE, EXIT_REGRESSION
from tuner.objective import Constraints
from tuner.results import SCHEMA_VERSION, Measurement, Spread, TrialConfig

LOAD = {"mode": "concurrency", "concurrency": 4, "engine": "builtin"}
BASELINE_TEXT = 'name: "mlp"\nmax_batch_size: 8\ndynamic_batching {\n}\n'
CANDIDATE_TEXT = 'name: "mlp"\nmax_batch_size: 16\ndynamic_batching {\n}\n'
DRIFT = 0.05  # sd of the log of a drift (heat, clocks, tenants) that hits both configs of a pair alike
# t quantile (0.975) for 2 degrees of freedom in closed form, (2p - 1) / sqrt(2p(1 - p)): not the code's bisection.
T_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def measurement(energy_per_inference_j: float | None, throughput_per_s: float = 100.0, p99_ms: float = 8.0,
                memory_mb: float | None = 120.0, energy_source: str = "estimated",
                load: dict | None = None) -> Measurement:
    """A measurement of 300 inferences over three 1 s windows with the given figures."""
    success = 300
    energy_j = None if energy_per_inference_j is None else energy_per_inference_j * success
    return Measurement(
        config=TrialConfig(), load=load or LOAD, throughput_per_s=Spread(throughput_per_s, 1.0, 3), p50_ms=4.0,
        p95_ms=6.0, p99_ms=Spread(p99_ms, 0.5, 3), energy_j=energy_j, energy_source=energy_source,
        energy_domains_j={}, inferences_per_j=Spread(success / energy_j if energy_j else math.nan, 0.0, 3),
        memory_mb=memory_mb, memory_source="RSS of server processes", success_count=success, failure_count=0,
        duration_s=3.0, stable=True)


def comparison(pairs: list[tuple[Measurement, Measurement]], constraints: Constraints | None = None,
               inconclusive_passes: bool = False, candidate_text: str = CANDIDATE_TEXT,
               max_regression: float = 0.05) -> Comparison:
    """A Comparison of (baseline, candidate) pairs, orders alternating AB BA AB ..."""
    return Comparison(
        model="mlp", baseline_path="baseline.pbtxt", candidate_path="model_repository/mlp/config.pbtxt",
        baseline_text=BASELINE_TEXT, candidate_text=candidate_text,
        pairs=tuple(Pair(i + 1, i % 2 == 1, b, c) for i, (b, c) in enumerate(pairs)),
        max_regression=max_regression, inconclusive_passes=inconclusive_passes,
        constraints=constraints or Constraints(), load=LOAD, stop_reason="resolved after 5 pairs")


def drawn(seed: int, true_ratio: float, noise: float, pair_count: int) -> Comparison:
    """Pairs whose candidate costs `true_ratio` times the baseline's energy per inference (1 mJ).

    `noise` is the sd of the log of one pair's candidate/baseline ratio: each measurement carries noise/sqrt(2) of its
    own, on top of a drift that moves both measurements of a pair alike (which pairing cancels)."""
    rng = np.random.default_rng(seed)
    drift = np.exp(rng.normal(0.0, DRIFT, pair_count))
    own = np.exp(rng.normal(0.0, noise / math.sqrt(2), (2, pair_count)))
    baseline, candidate = 1e-3 * drift * own[0], 1e-3 * true_ratio * drift * own[1]
    return comparison([(measurement(float(b)), measurement(float(c))) for b, c in zip(baseline, candidate, strict=True)])


def verdicts(true_ratio: float, noise: float, pair_counts: list[int], draws: int) -> dict[str, int]:
    """How often each verdict comes out over `draws` seeded draws (pair counts taken in turn)."""
    counts = {PASS: 0, REGRESSION: 0, INCONCLUSIVE: 0}
    for seed in range(draws):
        counts[drawn(seed, true_ratio, noise, pair_counts[seed % len(pair_counts)]).verdict] += 1
    return counts


# The paired ratio, by hand.

def test_paired_ratio_is_the_geometric_mean_with_a_paired_t_interval_on_the_logs():
    # log-ratios ln2 * (1, 3, 2): mean 2 ln2 (ratio 4), sd ln2, so the interval is 4 * exp(± t_2 ln2 / sqrt(3)).
    ratio = PairedRatio.of([1.0, 2.0, 0.5], [2.0, 16.0, 2.0])
    half = T_2 * math.log(2) / math.sqrt(3)
    assert ratio.n == 3
    assert ratio.ratio == pytest.approx(4.0, rel=1e-12)
    assert ratio.low == pytest.approx(4.0 * math.exp(-half), rel=1e-9)
    assert ratio.high == pytest.approx(4.0 * math.exp(half), rel=1e-9)
    assert ratio.to_dict() == {"ratio": ratio.ratio, "low": ratio.low, "high": ratio.high, "n": 3}


def test_a_pair_with_a_non_positive_or_missing_value_is_dropped():
    kept = PairedRatio.of([1.0, 2.0, 0.5], [2.0, 16.0, 2.0])
    assert PairedRatio.of([1.0, 2.0, 0.5, 0.0, 1.0, math.nan, 1.0],
                          [2.0, 16.0, 2.0, 5.0, -1.0, 1.0, math.inf]) == kept


def test_one_pair_has_no_interval_and_is_inconclusive():
    one = PairedRatio.of([1.0], [1.5])
    assert one.ratio == pytest.approx(1.5) and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high)
    assert decide(one, 0.05) == INCONCLUSIVE
    none = PairedRatio.of([], [])
    assert none.n == 0 and math.isnan(none.ratio) and decide(none, 0.05) == INCONCLUSIVE
    single = comparison([(measurement(1e-3), measurement(2e-3))])
    assert single.verdict == INCONCLUSIVE and single.exit_code == EXIT_INCONCLUSIVE and not single.resolved()
    assert "too few for an interval" in render_markdown(single).splitlines()[0]


def test_decide_at_the_threshold():
    assert decide(PairedRatio(1.02, 0.99, 1.05, 4), 0.05) == PASS  # the interval reaches the threshold: still a pass
    assert decide(PairedRatio(1.08, 1.0500001, 1.1, 4), 0.05) == REGRESSION
    assert decide(PairedRatio(1.06, 1.05, 1.07, 4), 0.05) == INCONCLUSIVE  # low at the threshold: not excluded
    assert decide(PairedRatio(1.2, 1.15, 1.25, 4), 0.25) == PASS


# The gate on synthetic pairs with known effects (drift of 5% per pair on top of the noise).

def test_a_ten_percent_regression_is_caught():
    # 10% over 5 pairs at 2% noise: the lower end is about 1.10 * exp(-2.78 * 0.02 / sqrt(5)) = 1.073 > 1.05.
    counts = verdicts(1.10, 0.02, [5], 100)
    assert counts[REGRESSION] >= 95, counts
    assert drawn(0, 1.10, 0.02, 5).exit_code == EXIT_REGRESSION


def test_identical_configs_are_not_flagged_beyond_the_stated_rate():
    # A 95% two-sided interval lies wholly above the true ratio in 2.5% of draws, so above 1.05 when the true ratio
    # is 1.0 in fewer. With 2,000 draws the binomial sd of a 2.5% rate is sqrt(0.025 * 0.975 / 2000) = 0.0035;
    # three of them (0.0105) keep a correct interval from failing here by chance (p < 0.002).
    draws = 2000
    counts = verdicts(1.0, 0.03, [3, 4, 5, 6], draws)
    assert counts[REGRESSION] / draws <= 0.025 + 3 * math.sqrt(0.025 * 0.975 / draws), counts
    assert counts[PASS] > draws / 2, counts


def test_at_the_threshold_a_regression_is_called_at_the_stated_rate():
    # A true ratio of exactly 1 + max_regression is the worst case for a false "regression": a correct interval
    # excludes it from above in 2.5% of draws. Too wide an interval (or one-sided) and the rate falls towards 0;
    # too narrow (a normal quantile in place of Student's t at 2 to 5 df) and it rises to 5-10%. Same margin as above.
    draws = 2000
    margin = 3 * math.sqrt(0.025 * 0.975 / draws)
    counts = verdicts(1.05, 0.03, [3, 4, 5, 6], draws)
    assert 0.025 - margin <= counts[REGRESSION] / draws <= 0.025 + margin, counts


def test_a_noisy_five_percent_edge_is_inconclusive():
    counts = verdicts(1.05, 0.03, [3], 200)
    assert counts[INCONCLUSIVE] >= 180, counts
    edge = drawn(1, 1.05, 0.03, 3)
    assert edge.verdict == INCONCLUSIVE and edge.exit_code == EXIT_INCONCLUSIVE and not edge.resolved()
    passes = drawn(1, 1.05, 0.03, 3)
    passes = Comparison(**{**passes.__dict__, "inconclusive_passes": True})
    assert passes.verdict == INCONCLUSIVE and passes.exit_code == 0
    first = render_markdown(edge).splitlines()[0]
    assert first.startswith("**greentune compare: INCONCLUSIVE**")
    assert "straddles the 5% threshold" in first and "--budget" in first and "quieter machine" in first
    assert "--inconclusive pass" in render_markdown(passes).splitlines()[0]


def test_pass_and_regression_exit_codes():
    same = comparison([(measurement(1e-3), measurement(1e-3 * r)) for r in (1.0, 1.01, 0.99, 1.0)])
    assert same.verdict == PASS and same.exit_code == 0 and same.resolved()
    worse = comparison([(measurement(1e-3), measurement(1e-3 * r)) for r in (1.2, 1.21, 1.19)])
    assert worse.verdict == REGRESSION and worse.exit_code == EXIT_REGRESSION and worse.resolved()


# Constraints.

def test_a_candidate_that_breaks_a_constraint_fails_the_gate_and_the_markdown_names_it():
    pairs = [(measurement(1e-3, p99_ms=8.0), measurement(1e-3 * r, p99_ms=p99))
             for r, p99 in ((1.0, 11.0), (1.01, 13.0), (0.99, 12.0))]
    gated = comparison(pairs, Constraints(max_p99_ms=10.0))
    assert decide(gated.energy(), 0.05) == PASS  # the energy alone would pass
    assert gated.violations() == {"max_p99_ms": pytest.approx(0.2)}
    assert gated.verdict == REGRESSION and gated.exit_code == EXIT_REGRESSION
    first = render_markdown(gated).splitlines()[0]
    assert first.startswith("**greentune compare: REGRESSION**")
    assert "--max-p99-ms 10 ms: candidate p99 latency 12.00 ms, 20.0% above" in first
    assert comparison(pairs, Constraints(max_p99_ms=20.0)).verdict == PASS


def test_throughput_floor_and_unmeasured_memory_break_the_gate():
    slow = comparison([(measurement(1e-3), measurement(1e-3, throughput_per_s=80.0)) for _ in range(3)],
                      Constraints(min_throughput_per_s=100.0))
    assert slow.violations() == {"min_throughput": pytest.approx(0.2)} and slow.verdict == REGRESSION
    assert "--min-throughput 100 infer/s: candidate throughput 80.00 infer/s, 20.0% below" in render_markdown(slow)
    blind = comparison([(measurement(1e-3), measurement(1e-3, memory_mb=None)) for _ in range(3)],
                       Constraints(max_memory_mb=500.0))
    assert blind.verdict == REGRESSION
    assert "candidate memory not measured, so it cannot be shown to hold" in render_markdown(blind)


# compare.md and compare.json.

def test_markdown_table_sources_order_method_and_diff():
    pairs = [(measurement(1e-3 * b), measurement(1.123e-3 * b, throughput_per_s=90.0)) for b in (1.0, 1.02, 0.98)]
    text = render_markdown(comparison(pairs))
    lines = text.splitlines()
    assert lines[0].startswith("**greentune compare: REGRESSION** — the candidate costs 12.3% more energy per "
                               "inference (95% interval +12.3% to +12.3%, 3 pairs), above the 5% threshold")
    table = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ") and "---" not in line}
    assert "1.000 ± 0.050 mJ" in table["energy per inference (mJ)"]
    assert "+12.3% (+12.3% to +12.3%)" in table["energy per inference (mJ)"]
    assert "100.0 ± 0.0 infer/s" in table["throughput (infer/s)"] and "90.00 ± 0.00 infer/s" in table[
        "throughput (infer/s)"]
    assert "-10.0% (-10.0% to -10.0%)" in table["throughput (infer/s)"]
    assert "8.000 ± 0.000 ms" in table["p99 latency (ms)"] and "120.0 ± 0.0 MB" in table["memory (MB)"]
    assert "- energy: estimated (total energy, idle power included)" in lines
    assert "- memory: RSS of server processes" in lines
    assert "- load: closed loop, 4 requests in flight, sent by builtin" in lines
    assert any(line.startswith("- pairs: 3, in the order AB BA AB") for line in lines)
    assert any(STATISTICS_METHOD in line for line in lines)
    block = text[text.index("```diff\n"):]
    assert "--- baseline.pbtxt" in block and "+++ model_repository/mlp/config.pbtxt" in block
    assert "-max_batch_size: 8\n" in block and "+max_batch_size: 16\n" in block


def test_markdown_says_measured_by_nvml_and_an_identical_config():
    pairs = [(measurement(1e-3, energy_source="measured by NVML"),
              measurement(1e-3 * r, energy_source="measured by NVML")) for r in (1.0, 1.01, 0.99)]
    same = comparison(pairs, candidate_text=BASELINE_TEXT)
    text = render_markdown(same)
    assert text.startswith("**greentune compare: PASS** — the candidate costs ")
    assert "within the 5% threshold" in text.splitlines()[0]
    assert "- energy: measured by NVML (total energy, idle power included)" in text and "estimated" not in text
    assert same.config_diff() == [] and "identical" in text and "```diff" not in text


def test_no_energy_reading_is_inconclusive_and_says_so():
    blind = comparison([(measurement(None), measurement(None)) for _ in range(3)])
    assert "energy_per_inference_j" not in blind.ratios() and "throughput_per_s" in blind.ratios()
    assert blind.verdict == INCONCLUSIVE
    assert "not measured in any pair" in render_markdown(blind).splitlines()[0]
    assert "not measured" in next(line for line in render_markdown(blind).splitlines() if line.startswith("| energy"))


def test_document_is_strict_json_with_the_schema_version_and_reads_back():
    original = drawn(3, 1.10, 0.02, 5)
    document = original.to_document()
    text = json.dumps(document, allow_nan=False)
    loaded = json.loads(text)
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert loaded["verdict"] == REGRESSION and loaded["exit_code"] == EXIT_REGRESSION
    assert loaded["statistics"] == STATISTICS_METHOD and loaded["energy_source"] == "estimated"
    assert [p["order"] for p in loaded["pairs"]] == ["AB", "BA", "AB", "BA", "AB"]
    assert set(loaded["ratios"]) == {"energy_per_inference_j", "throughput_per_s", "p99_ms", "memory_mb"}
    assert loaded["ratios"]["energy_per_inference_j"]["n"] == 5 and loaded["units"]["p99_ms"] == "ms"
    assert "+max_batch_size: 16" in loaded["config_diff"]
    back = Comparison.from_document(loaded)
    assert render_markdown(back) == render_markdown(original) and back.to_document() == document


def test_one_pair_document_has_null_interval_ends():
    document = comparison([(measurement(1e-3), measurement(1.2e-3))]).to_document()
    json.dumps(document, allow_nan=False)
    energy = document["ratios"]["energy_per_inference_j"]
    assert energy["low"] is None and energy["high"] is None and energy["n"] == 1
