"""Screening through Optuna's pruning, and load-tool failures: the pruner on an in-memory study, the constraint rule,
and the search loop with a fake bench that hands each window to `screen` as the real bench does."""

from __future__ import annotations

import html
import json
from collections.abc import Callable

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tests.unit.test_search_loop import BASE, CPU_SPACE, TWO_CONFIGS, FakeBench, efficiency, make_job, study_of
from tuner import events, paths
from tuner.errors import LoadToolError
from tuner.job import SearchSettings
from tuner.model_config import trial_of
from tuner.objective import Constraints, best_trial, closest_trial, pareto_front, violations
from tuner.outputs import summary_document, trials_frame, write_outputs
from tuner.pruning import SpreadPruner, TrialScreen
from tuner.report import write_reports
from tuner.results import Measurement, Spread, TrialConfig, TrialResult, Window
from tuner.screening import ScreenWindow, constraint_breach, window_value
from tuner.search import Search
from tuner.stopping import Stopping
from tuner.storage import open_storage
from tuner.study import recorded_results

NOISE = (0.98, 1.02, 1.0)  # real windows scatter by a few percent; so do these


def in_memory_study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", pruner=pruner or SpreadPruner())


def completed(study: optuna.Study, windows: list[float], feasible: bool = True, **attrs) -> int:
    """A finished trial whose windows reported `windows`; its value is their mean."""
    trial = study.ask()
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    for step, value in enumerate(windows, 1):
        trial.report(value, step)
    trial.set_constraint("max_p99_ms", -0.5 if feasible else 0.5)
    study.tell(trial, sum(windows) / len(windows))
    return trial.number


def verdict(study: optuna.Study, values: list[float]) -> str | None:
    return SpreadPruner().verdict(study, values)


# The pruner, pure: an in-memory study, no server, no bench.

def test_nothing_is_pruned_before_a_best_exists_or_without_its_spread():
    study = in_memory_study()
    assert verdict(study, [0.001]) is None  # the first trial: no best yet
    completed(study, [10.0], feasible=True)  # one window: no measured spread
    assert verdict(study, [0.001]) is None
    assert verdict(in_memory_study(), []) is None  # never before a window


def test_two_windows_are_pruned_only_when_their_ci_clears_the_bests_beyond_the_spread():
    study = in_memory_study()
    best = completed(study, [10.0, 10.2, 9.8])  # 95% CI: 10.0 +- 4.303 * 0.2 / sqrt(3) = [9.503, 10.497]
    low = Spread.of([10.0, 10.2, 9.8]).interval()[0]
    assert low == pytest.approx(9.503, abs=1e-3)
    tight, wide = [9.0, 9.02], [8.0, 10.0]  # the same mean, 9.0 or 9.01: what decides is the spread, not a margin
    reason = verdict(study, tight)
    assert reason == (f"9.01 infer/J, 95% CI upper bound {Spread.of(tight).interval()[1]:.2f}, below trial {best}'s "
                      f"95% CI lower bound {low:.2f} infer/J")
    assert verdict(study, wide) is None
    # judged on its last three windows (--stable-windows): an early slow window does not widen the interval
    assert verdict(study, [2.0, 9.0, 9.01, 9.02]) is not None and verdict(study, [2.0, 9.0, 9.01]) is None
    assert verdict(study, [10.5, 11.0]) is None  # better than the best


def test_one_window_uses_the_bests_window_to_window_spread_as_the_noise_scale():
    quiet, noisy = in_memory_study(), in_memory_study()
    completed(quiet, [10.0, 10.2, 9.8])  # sd 0.2, lower bound 9.50
    completed(noisy, [10.0, 11.0, 9.0])  # sd 1.0, lower bound 7.52
    assert verdict(quiet, [8.8]) == ("8.80 infer/J + 3 sd of trial 0's windows (0.20) = 9.40, "
                                     "below trial 0's 95% CI lower bound 9.50 infer/J")
    assert verdict(quiet, [9.0]) is None  # 9.0 + 3 x 0.2 reaches the best's interval
    assert verdict(noisy, [8.8]) is None and verdict(noisy, [4.0]) is not None


def test_the_reference_is_the_best_completed_feasible_trial():
    study = in_memory_study()
    completed(study, [50.0, 50.1, 49.9], feasible=False)  # breaks a constraint: not a best to beat
    completed(study, [10.0, 10.2, 9.8])
    running = study.ask()
    running.report(30.0, 1)  # a running trial is not a best either
    assert SpreadPruner().reference(study)[0] == 1
    assert verdict(study, [8.0]) is not None and verdict(study, [20.0]) is None


def test_optunas_should_prune_asks_the_pruner_and_the_baseline_is_never_pruned():
    study = in_memory_study()
    completed(study, [10.0, 10.2, 9.8])
    trial = study.ask()
    trial.report(2.0, 1)
    assert trial.should_prune()
    baseline = study.ask()
    baseline.set_user_attr("baseline", True)
    baseline.report(2.0, 1)
    assert not baseline.should_prune()


# Constraints: clearly broken, from what the windows show while the trial runs.

def window(index=1, inferences=100.0, energy_j=10.0, memory_mb=100.0, p99_ms=None, concurrency=4) -> ScreenWindow:
    return ScreenWindow(index=index, duration_s=1.0, inferences=inferences, energy_j=energy_j, memory_mb=memory_mb,
                        p99_ms=p99_ms, concurrency=concurrency)


def test_memory_over_the_limit_or_p99_far_over_it_in_every_window_is_clearly_infeasible():
    limits = Constraints(max_p99_ms=10.0, max_memory_mb=1000.0)
    assert constraint_breach([window(memory_mb=1200.0)], limits) == "memory 1200 MB over --max-memory-mb 1000 MB"
    assert constraint_breach([window(memory_mb=900.0, p99_ms=15.0)], limits) is None  # over, but not far over
    assert constraint_breach([window(p99_ms=25.0)], limits) == (
        "p99 at least 25.0 ms in every window, over 2 x --max-p99-ms 10 ms")
    assert constraint_breach([window(p99_ms=25.0), window(2, p99_ms=12.0)], limits) is None  # not in every window
    assert constraint_breach([window(memory_mb=5000.0)], Constraints()) is None


def test_without_live_latencies_littles_law_stands_in_for_p99_in_closed_loop_only():
    limits = Constraints(max_p99_ms=10.0)
    slow = window(inferences=100.0, concurrency=4)  # 4 in flight / 100 infer/s: 40 ms per request
    assert slow.littles_latency_ms == pytest.approx(40.0)
    assert constraint_breach([slow], limits) == (
        "mean latency by Little's law (4 in flight / 100 infer/s) at least 40.0 ms in every window, over 2 x "
        "--max-p99-ms 10 ms (p99 is known only when the load tool exits)")
    assert constraint_breach([window(inferences=1000.0, concurrency=4)], limits) is None  # 4 ms
    assert constraint_breach([window(inferences=100.0, concurrency=None)], limits) is None  # open loop: unknown
    assert constraint_breach([window(inferences=None)], limits) is None  # not counted: unknown


def test_the_window_value_is_the_objective():
    w = window(inferences=200.0, energy_j=8.0)
    assert window_value(w, "efficiency") == 25.0 and window_value(w, "throughput") == 200.0
    assert window_value(window(energy_j=None), "efficiency") is None
    assert window_value(window(inferences=None), "throughput") is None


def test_a_trial_screen_reports_every_window_and_judges_only_what_it_may():
    study = in_memory_study()
    completed(study, [10.0, 10.2, 9.8])
    trial = study.ask()
    screen = TrialScreen(trial, SpreadPruner(), Constraints(), "efficiency")
    assert screen([window(inferences=100.0, energy_j=10.0)]) is None  # 10 infer/J: inside the best's spread
    assert screen([window(), window(2, inferences=20.0, energy_j=10.0)]) is None  # 2 windows, wide CI
    assert study.trials[trial.number].intermediate_values == {1: 10.0, 2: 2.0}
    retry = TrialScreen(trial, SpreadPruner(), Constraints(), "efficiency", first_step=screen.next_step)
    assert retry([window(inferences=20.0, energy_j=10.0)]) is not None  # judged on its own attempt's windows
    assert study.trials[trial.number].intermediate_values == {1: 10.0, 2: 2.0, 3: 2.0}
    baseline = TrialScreen(study.ask(), SpreadPruner(), Constraints(max_memory_mb=1.0), "efficiency", judge=False)
    assert baseline([window(inferences=1.0, memory_mb=500.0)]) is None  # reported, never judged


# The search loop with a bench that hands every window to `screen`.

class WindowedBench(FakeBench):
    """As FakeBench, but each config runs three 1 s windows (inferences per joule scattered by NOISE), handed to
    `screen` one at a time as the real bench does; a reason stops the trial with the windows so far. The load tool
    fails on the configs `tool_fails` names, as often as it says."""

    def __init__(self, *args, memory_mb: Callable[[TrialConfig], float] = lambda c: 120.0,
                 p99_ms: Callable[[TrialConfig], float] = lambda c: 8.0,
                 tool_fails: Callable[[TrialConfig], int] = lambda c: 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.memory_mb, self.p99_ms, self.tool_fails = memory_mb, p99_ms, tool_fails
        self.attempts: dict[str, int] = {}
        self.screens: list[object] = []

    def measure(self, config, number, screen=None):
        self.screens.append(screen)
        attempt = self.attempts[config.key()] = self.attempts.get(config.key(), 0) + 1
        if attempt <= self.tool_fails(config):
            self.calls.append((number, config))
            return TrialResult(number, config, None, "load tool failed: perf_analyzer's export: a request at byte "
                               "5041933 has no response_timestamps", violations(None, self.constraints),
                               failure_kind="tool")
        result = super().measure(config, number)
        if result.failed:
            return result
        windows, seen, reason = [], [], None
        for index, factor in enumerate(NOISE, 1):
            ipj = self.ipj(config) * factor
            windows.append(Window(1.0, 100, 0, 100.0, 4.0, 6.0, self.p99_ms(config), 100.0 / ipj,
                                  self.memory_mb(config)))
            seen.append(ScreenWindow(index, 1.0, 100.0, 100.0 / ipj, self.memory_mb(config), self.p99_ms(config), 4))
            why = screen(tuple(seen)) if screen is not None else None
            if why is not None and index < len(NOISE):
                reason = f"after {index} window{'s' if index > 1 else ''}: {why}"
                break
        m = measurement_of(config, windows, reason)
        return TrialResult(number, config, m, None, violations(m, self.constraints))


def measurement_of(config: TrialConfig, windows: list[Window], screened_reason: str | None) -> Measurement:
    energy = sum(w.energy_j or 0.0 for w in windows)
    return Measurement(
        config=config, load={"mode": "concurrency", "concurrency": 4, "engine": "builtin"},
        throughput_per_s=Spread.of([w.throughput_per_s for w in windows]), p50_ms=4.0, p95_ms=6.0,
        p99_ms=Spread.of([w.p99_ms for w in windows]), energy_j=energy, energy_source="estimated",
        energy_domains_j={"cpu": energy}, inferences_per_j=Spread.of([w.success_count / (w.energy_j or 1.0)
                                                                      for w in windows]),
        memory_mb=max(w.memory_mb or 0.0 for w in windows), memory_source="RSS of server processes",
        success_count=100 * len(windows), failure_count=0, duration_s=float(len(windows)),
        stable=len(windows) == 3, windows=tuple(windows), screened_reason=screened_reason)


def worse_than_the_baseline(config: TrialConfig) -> float:
    """The baseline is the best there is by far: every other config is clearly worse after one window."""
    return 100.0 if config == trial_of(BASE) else efficiency(config)


def test_a_clearly_worse_trial_is_screened_recorded_pruned_and_never_the_pick(tmp_path):
    seen: list[events.Event] = []
    bench = WindowedBench(ipj=worse_than_the_baseline)
    job = make_job(tmp_path)
    outcome = Search(job, SearchSettings(trials=4, seed=2), seen.append).run(bench)
    baseline, *others = outcome.results
    assert not baseline.screened and baseline.measurement.inferences_per_j.n == 3
    assert others and all(r.screened for r in others)
    for result in others:
        assert result.screened_reason.startswith("after 1 window: ")
        assert "infer/J + 3 sd of trial 0's windows" in result.screened_reason
        assert len(result.measurement.windows) == 1 and not result.feasible and not result.failed
        record = json.loads(paths.trial_record_path(tmp_path, result.number).read_text())["trial"]
        assert TrialResult.from_dict(record) == result and record["screened_reason"] == result.screened_reason
    assert outcome.best.number == baseline.number
    assert best_trial(outcome.results, "throughput").number == baseline.number  # every pick skips them
    assert pareto_front(outcome.results) == [baseline.number]
    study = study_of(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] + [TrialState.PRUNED] * len(others)
    for trial, result in zip(study.trials[1:], others, strict=True):
        # TPE learns a pruned trial from its last intermediate value: the window it was stopped after
        assert trial.intermediate_values == {1: pytest.approx(efficiency(result.config) * NOISE[0])}
        assert trial.value == pytest.approx(efficiency(result.config) * NOISE[0])
    assert sum(isinstance(e, events.TrialFinished) and e.result.screened for e in seen) == len(others)

    write_outputs(job, outcome)
    summary = json.loads(paths.summary_path(tmp_path).read_text())
    assert summary["screened_trial_count"] == len(others) and summary["best"]["trial"] == baseline.number
    assert [s["trial"] for s in summary["screened_trials"]] == [r.number for r in others]
    assert summary["screened_trials"][0]["reason"] == others[0].screened_reason
    trials = pd.read_csv(paths.trials_csv_path(tmp_path))
    assert list(trials["status"]) == ["feasible"] + ["screened"] * len(others)
    assert trials["screened_reason"].iloc[1] == others[0].screened_reason
    write_reports(str(tmp_path))
    page = (tmp_path / "report.html").read_text()
    assert '<tr class="screened">' in page and html.escape(others[0].screened_reason) in page
    assert f"{len(others)} trial(s) screened" in page
    markdown = (tmp_path / "report.md").read_text()
    assert "### Screened and failed trials" in markdown
    assert f"| {others[0].number} | {others[0].config.describe()} | screened | {others[0].screened_reason} |" in markdown

    again = WindowedBench(ipj=worse_than_the_baseline)  # --resume reads the screened trials back
    resumed = Search(job, SearchSettings(trials=4, seed=2, resume=True)).run(again)
    assert again.calls == [] and [r.number for r in resumed.results if r.screened] == [r.number for r in others]


def test_the_baseline_is_never_screened_even_by_a_broken_constraint(tmp_path):
    bench = WindowedBench(constraints=Constraints(max_memory_mb=100.0))  # every config uses 120 MB
    job = make_job(tmp_path, constraints=Constraints(max_memory_mb=100.0))
    outcome = Search(job, SearchSettings(trials=3)).run(bench)
    baseline, *others = outcome.results
    assert not baseline.screened and len(baseline.measurement.windows) == 3 and not baseline.feasible
    assert all(r.screened_reason == "after 1 window: memory 120 MB over --max-memory-mb 100 MB" for r in others)
    assert all(r.violations["max_memory_mb"] > 0 for r in others)
    assert outcome.best is None and closest_trial(outcome.results) is not None


def test_p99_far_over_the_limit_is_screened_and_no_screening_measures_everything(tmp_path):
    def p99(config: TrialConfig) -> float:
        return 8.0 if config == trial_of(BASE) else 50.0

    limits = Constraints(max_p99_ms=20.0)
    outcome = Search(make_job(tmp_path / "on", constraints=limits), SearchSettings(trials=3)).run(
        WindowedBench(constraints=limits, p99_ms=p99))
    assert [r.screened for r in outcome.results] == [False, True, True]
    assert outcome.results[1].screened_reason == (
        "after 1 window: p99 at least 50.0 ms in every window, over 2 x --max-p99-ms 20 ms")

    bench = WindowedBench(constraints=limits, p99_ms=p99, ipj=worse_than_the_baseline)
    off = Search(make_job(tmp_path / "off", constraints=limits), SearchSettings(trials=3, screening=False)).run(bench)
    assert not any(r.screened for r in off.results) and all(len(r.measurement.windows) == 3 for r in off.results)
    assert all(t.intermediate_values for t in study_of(tmp_path / "off").trials)  # still reported for the sampler


def test_a_screened_trial_is_not_repeated_and_a_duplicate_of_it_is_pruned_too(tmp_path):
    def ipj(config: TrialConfig) -> float:
        return 100.0 if config.instance_count == 1 else 10.0

    bench = WindowedBench(ipj=ipj)
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=3, sampler="random", repeats=2)).run(bench)
    screened = [r for r in outcome.results if r.screened]
    assert len(screened) == 1 and screened[0].config.instance_count == 2
    assert bench.remeasured == [outcome.best.number]  # the top feasible configs only
    study = study_of(tmp_path)
    duplicates = [t for t in study.trials if t.user_attrs.get("duplicate_of") == screened[0].number]
    assert duplicates and all(t.state == TrialState.PRUNED and t.intermediate_values for t in duplicates)
    assert recorded_results(study)[1] == outcome.duplicates  # counted as reused, whatever their state


def test_a_shared_study_screens_too_and_over_budget_prunes_are_not_results(tmp_path):
    url = f"journal://{tmp_path / 'study.journal'}"
    settings = SearchSettings(trials=3, storage=url, study="s", poll_s=0.05)
    outcome = Search(make_job(tmp_path), settings).run(WindowedBench(ipj=worse_than_the_baseline))
    assert len(outcome.results) == 3 and [r.screened for r in outcome.results] == [False, True, True]
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    over = study.ask()
    study.tell(over, state=TrialState.PRUNED)  # as _over_budget does: no result
    assert [r.number for r in recorded_results(study)[0]] == [r.number for r in outcome.results]


# A failure of the load tool: retried once, then recorded as the tool's, never taught to the sampler.

def test_a_tool_failure_is_retried_once_and_a_retry_that_works_is_an_ordinary_trial(tmp_path):
    seen: list[events.Event] = []
    bench = WindowedBench(ipj=lambda c: 10.0 * (c.instance_count or 1), tool_fails=lambda c: c.instance_count == 2)
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=2, sampler="grid"), seen.append).run(bench)
    assert not any(r.failed for r in outcome.results)
    retried = [e for e in seen if isinstance(e, events.TrialRetried)]
    assert len(retried) == 1 and "no response_timestamps" in retried[0].reason
    assert [c.instance_count for _, c in bench.calls].count(2) == 2  # same config, fresh measurement
    assert all(t.state == TrialState.COMPLETE for t in study_of(tmp_path).trials)


def test_a_tool_that_fails_twice_is_recorded_as_its_failure_not_the_configs(tmp_path):
    bench = WindowedBench(tool_fails=lambda c: 99 if c.instance_count == 2 else 0)
    job = make_job(tmp_path, TWO_CONFIGS)
    outcome = Search(job, SearchSettings(trials=3, sampler="random", seed=1)).run(bench)
    lost = [r for r in outcome.results if r.failed]
    assert lost and all(r.tool_failure and r.failure_kind == "tool" for r in lost)
    assert lost[0].failure_reason.startswith("load tool failed: perf_analyzer's export")
    # never a dedupe answer: each proposal of the config is measured again (twice: the retry)
    assert [c.instance_count for _, c in bench.calls].count(2) == 2 * len(lost) >= 4
    study = study_of(tmp_path)
    for result in lost:
        trial = study.trials[result.number]
        assert trial.state == TrialState.FAIL and trial.value is None  # not a 0.0 the sampler would learn from
        assert trial.user_attrs["result"]["failure_kind"] == "tool"
    write_outputs(job, outcome)
    summary = json.loads(paths.summary_path(tmp_path).read_text())
    assert summary["tool_failure_count"] == len(lost) and summary["failed_trial_count"] == len(lost)
    assert summary["tool_failures"][0]["reason"] == lost[0].failure_reason
    write_reports(str(tmp_path))
    assert "failed (load tool)" in (tmp_path / "report.html").read_text()
    assert f"| {lost[0].number} | instance_count=2 | failed (load tool) | {lost[0].failure_reason} |" in (
        tmp_path / "report.md").read_text()
    trials = pd.read_csv(paths.trials_csv_path(tmp_path))
    assert list(trials.loc[trials["status"] == "failed", "failure_kind"]) == ["tool"] * len(lost)
    assert list(trials.loc[trials["status"] == "feasible", "failure_kind"].isna()) == [True]

    again = WindowedBench()  # --resume reads the tool's failures back, and measures their config afresh
    resumed = Search(job, SearchSettings(trials=4, sampler="random", seed=1, resume=True)).run(again)
    assert [r.number for r in resumed.results if r.tool_failure] == [r.number for r in lost]
    assert [c.instance_count for _, c in again.calls] == [2]


def test_a_config_failure_keeps_todays_behaviour(tmp_path):
    bench = WindowedBench(refuse=lambda c: c.instance_count == 2)
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=2, sampler="grid")).run(bench)
    failed = next(r for r in outcome.results if r.failed)
    assert failed.failure_kind == "config" and not failed.tool_failure
    trial = study_of(tmp_path).trials[failed.number]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.0


def test_tool_failures_spend_the_budget_but_not_patience():
    def result(number: int, kind: str | None, ipj: float = 1.0) -> TrialResult:
        config = TrialConfig(instance_count=1)
        if kind is None:
            m = measurement_of(config, [Window(1.0, 100, 0, 100.0, 4.0, 6.0, 8.0, 100.0 / ipj, 1.0)] * 3, None)
            return TrialResult(number, config, m, None, violations(m, Constraints()))
        return TrialResult(number, config, None, "failed", violations(None, Constraints()), failure_kind=kind)

    rule, results = Stopping(10, patience=2), []
    for number, kind in enumerate([None, "tool", "tool", "tool"]):
        results.append(result(number, kind, ipj=5.0))
        rule.record_measured(results[-1], results)
    assert rule.reason() is None and rule.measured == 4 and rule.consecutive_failures == 3
    results.append(result(4, "config"))
    rule.record_measured(results[-1], results)
    results.append(result(5, None))
    rule.record_measured(results[-1], results)
    assert rule.reason() == "no improvement in 2 trials (--patience)"


def test_failure_kind_and_screening_round_trip_and_old_records_still_load():
    config = TrialConfig(instance_count=2)
    windows = [Window(1.0, 100, 0, 100.0, 4.0, 6.0, 8.0, 10.0, 1.0)]
    m = measurement_of(config, windows, "after 1 window: memory 130 MB over --max-memory-mb 100 MB")
    for result in (TrialResult(1, config, m, None, {"max_memory_mb": 0.3}),
                   TrialResult(2, config, None, "load tool failed: x", failure_kind="tool"),
                   TrialResult(3, config, None, "Triton refused")):
        assert TrialResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    old_failed = {"number": 4, "config": {"instance_count": 2}, "measurement": None, "failure_reason": "refused"}
    assert TrialResult.from_dict(old_failed).failure_kind == "config"
    old_measured = TrialResult(5, config, m, None).to_dict()
    del old_measured["failure_kind"], old_measured["screened_reason"], old_measured["measurement"]["screened_reason"]
    loaded = TrialResult.from_dict(old_measured)
    assert loaded.failure_kind is None and not loaded.screened and loaded.feasible
    with pytest.raises(ValueError, match="failure_kind"):
        TrialResult(6, config, None, "x", failure_kind="network")
    with pytest.raises(LoadToolError):
        raise LoadToolError("the tool")  # a LoadGenerationError the bench tells apart


def test_summary_and_frame_without_screening_keep_their_columns(tmp_path):
    outcome = Search(make_job(tmp_path, CPU_SPACE), SearchSettings(trials=2)).run(FakeBench())
    frame = trials_frame(outcome.results, outcome.baseline)
    assert {"status", "failure_kind", "screened_reason"} <= set(frame.columns)
    document = summary_document(make_job(tmp_path, CPU_SPACE), outcome, None)
    assert document["screened_trial_count"] == 0 and document["tool_failures"] == []
