"""The search loop (ask, dedupe, measure, tell, persist) driven by a fake bench: no server, real Optuna study."""

from __future__ import annotations

import json
import math
import os

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import MODEL_REPOSITORY
from tuner import events, paths
from tuner.bench import LoadPolicy
from tuner.errors import StorageError
from tuner.job import SearchJob, SearchSettings
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings
from tuner.model_config import load_model_config, trial_of
from tuner.objective import CONSTRAINT_NAMES, FAILED_VIOLATION, Constraints, violations
from tuner.results import Measurement, Spread, TrialConfig, TrialResult, Window
from tuner.search import Search
from tuner.space import parse_space
from tuner.stopping import MAX_CONSECUTIVE_DUPLICATES, MAX_CONSECUTIVE_FAILURES, Stopping
from tuner.study import QUEUED_ATTR, REPEATED_ATTR

CPU_SPACE = """
knobs:
  instance_kind: KIND_CPU
  instance_count: {type: int, low: 1, high: 4}
  max_batch_size: {type: pow2, low: 1, high: 32}
  dynamic_batching: {type: bool}
  max_queue_delay_microseconds: {type: int, low: 0, high: 1000, step: 100}
"""
TWO_CONFIGS = "knobs:\n  instance_count: {type: int, low: 1, high: 2}\n"
BASE = load_model_config(MODEL_REPOSITORY, "mlp")
NO_CONSTRAINTS = Constraints()


def efficiency(config: TrialConfig) -> float:
    """A made-up but deterministic inferences-per-joule landscape: more instances and bigger batches win."""
    return 10.0 + 3.0 * (config.instance_count or 1) + math.log2(config.max_batch_size or 1)


def fake_measurement(config: TrialConfig, ipj: float, load: dict | None = None) -> Measurement:
    """Three 1 s windows at 100 infer/s whose joules give `ipj` inferences per joule."""
    windows = tuple(Window(duration_s=1.0, success_count=100, failure_count=0, throughput_per_s=100.0, p50_ms=4.0,
                           p95_ms=6.0, p99_ms=8.0, energy_j=100.0 / ipj, memory_mb=120.0) for _ in range(3))
    return Measurement(
        config=config, load=load or {"mode": "concurrency", "concurrency": 4},
        throughput_per_s=Spread.of([w.throughput_per_s for w in windows]), p50_ms=4.0, p95_ms=6.0,
        p99_ms=Spread.of([w.p99_ms for w in windows]), energy_j=sum(w.energy_j or 0 for w in windows),
        energy_source="estimated", energy_domains_j={"cpu": sum(w.energy_j or 0 for w in windows)},
        inferences_per_j=Spread.of([w.success_count / (w.energy_j or 1) for w in windows]), memory_mb=120.0,
        memory_source="RSS of server processes", success_count=300, failure_count=0, duration_s=3.0, stable=True,
        windows=windows,
    )


class FakeBench:
    """Stands in for tuner.bench.Bench: measures instantly from `efficiency`, fails or 'dies' where told to."""

    def __init__(self, constraints: Constraints = NO_CONSTRAINTS, ipj=efficiency, refuse=lambda c: False,
                 die_on_call: int | None = None, interrupt_on_call: int | None = None, clock=None) -> None:
        self.constraints = constraints
        self.ipj = ipj
        self.refuse = refuse
        self.die_on_call = die_on_call
        self.interrupt_on_call = interrupt_on_call
        self.clock = clock
        self.calls: list[tuple[int, TrialConfig]] = []
        self.remeasured: list[int] = []
        self.server_restarts = 0
        self.idle_power_w = {"cpu": 4.0}
        self.environment = {"triton_server": "fake"}
        self.meter_details = {"estimate": {"name": "estimate"}}

    def measure(self, config: TrialConfig, number: int, screen=None) -> TrialResult:
        """One shot, no windows as they come: `screen` is never called (see test_screening's WindowedBench)."""
        self.calls.append((number, config))
        if self.clock is not None:
            self.clock.now += 100.0
        if self.interrupt_on_call == len(self.calls):
            raise KeyboardInterrupt
        if self.die_on_call == len(self.calls):
            self.server_restarts += 1  # the real bench starts a fresh server before the next trial
            return TrialResult(number, config, None, "server died: tritonserver died during measurement",
                               violations(None, self.constraints))
        if self.refuse(config):
            return TrialResult(number, config, None, "Triton refused to load mlp: no GPUs are available",
                               violations(None, self.constraints))
        m = fake_measurement(config, self.ipj(config))
        return TrialResult(number, config, m, None, violations(m, self.constraints))

    def remeasure(self, result: TrialResult) -> TrialResult:
        self.remeasured.append(result.number)
        m = fake_measurement(result.config, self.ipj(result.config) * 0.9, result.measurement.load)
        return TrialResult(result.number, result.config, m, None, violations(m, self.constraints))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_job(tmp_path, space: str = CPU_SPACE, constraints: Constraints = NO_CONSTRAINTS) -> SearchJob:
    return SearchJob(model_repository=MODEL_REPOSITORY, model="mlp", base=BASE,
                     space=parse_space(yaml.safe_load(space), "test-space.yaml"), constraints=constraints,
                     load=LoadPolicy(LoadSpec(concurrency=4)), inputs=InputSource({}), measure=MeasureSettings(),
                     output=tmp_path)


def study_of(tmp_path) -> optuna.Study:
    return optuna.load_study(study_name="greentune-mlp", storage=paths.study_url(tmp_path))


def test_budget_reached_baseline_first_every_config_measured_once_and_persisted(tmp_path):
    seen: list[events.Event] = []
    published = []
    bench = FakeBench()
    outcome = Search(make_job(tmp_path), SearchSettings(trials=5, seed=3), seen.append,
                     on_result=lambda o: published.append(len(o.results))).run(bench)
    assert outcome.stop_reason == "trial budget reached (5 configs measured)"
    assert [n for n, _ in bench.calls] == [r.number for r in outcome.results]
    assert bench.calls[0][1] == trial_of(BASE) and outcome.baseline.number == bench.calls[0][0]
    keys = [c.key() for _, c in bench.calls]
    assert len(keys) == len(set(keys)) == 5
    assert outcome.best.measurement.inferences_per_j.mean == max(efficiency(c) for _, c in bench.calls)
    assert published[:5] == [1, 2, 3, 4, 5]  # outputs are written after every trial
    for result in outcome.results:  # each record is on disk and in the study before the next trial
        record = json.loads(paths.trial_record_path(tmp_path, result.number).read_text())["trial"]
        assert TrialResult.from_dict(record) == result
    trials = study_of(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert all(t.user_attrs["result"]["number"] == t.number for t in trials)
    assert [type(e) for e in seen if isinstance(e, (events.TrialStarted, events.TrialFinished))] == \
        [events.TrialStarted, events.TrialFinished] * 5
    assert outcome.idle_power_w == {"cpu": 4.0} and outcome.environment == {"triton_server": "fake"}


def test_duplicates_are_reused_never_measured_and_the_space_runs_out(tmp_path):
    bench = FakeBench()
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=5, sampler="random")).run(bench)
    assert len(bench.calls) == 2 and len(outcome.results) == 2
    assert outcome.duplicates == MAX_CONSECUTIVE_DUPLICATES
    assert outcome.stop_reason.startswith("space exhausted: the sampler proposed 40 measured configs in a row")
    reused = [t for t in study_of(tmp_path).get_trials() if "duplicate_of" in t.user_attrs]
    assert len(reused) == 40
    measured = {r.number: r for r in outcome.results}
    for trial in reused:  # a duplicate is told the earlier trial's objective, so the sampler learns nothing false
        assert trial.value == pytest.approx(measured[trial.user_attrs["duplicate_of"]].measurement.inferences_per_j.mean)


def test_grid_sampler_stops_when_the_grid_is_exhausted(tmp_path):
    bench = FakeBench()
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=5, sampler="grid")).run(bench)
    assert len(bench.calls) == 2
    assert outcome.stop_reason == "grid exhausted (2 distinct configs measured)"


def test_a_refused_config_is_a_failed_trial_and_the_search_goes_on(tmp_path):
    bench = FakeBench(refuse=lambda c: c.instance_count == 2)
    outcome = Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=2, sampler="grid")).run(bench)
    failed = [r for r in outcome.results if r.failed]
    assert len(failed) == 1 and failed[0].config.instance_count == 2
    assert "Triton refused to load mlp" in failed[0].failure_reason
    assert outcome.best is not None and outcome.best.config.instance_count == 1
    trial = study_of(tmp_path).trials[failed[0].number]
    assert trial.state == TrialState.COMPLETE and trial.value == 0.0
    assert trial.constraints == dict.fromkeys(CONSTRAINT_NAMES, FAILED_VIOLATION)  # far outside every constraint


def test_a_server_restart_is_reported_as_one_failed_trial(tmp_path):
    bench = FakeBench(die_on_call=2)
    outcome = Search(make_job(tmp_path), SearchSettings(trials=4)).run(bench)
    assert len(outcome.results) == 4 and outcome.server_restarts == 1
    died = [r for r in outcome.results if r.failed]
    assert len(died) == 1 and died[0].failure_reason.startswith("server died")
    assert died[0].number == bench.calls[1][0]


def test_too_many_failures_in_a_row_stop_the_search(tmp_path):
    bench = FakeBench(refuse=lambda c: True)
    outcome = Search(make_job(tmp_path), SearchSettings(trials=50)).run(bench)
    assert len(bench.calls) == MAX_CONSECUTIVE_FAILURES
    assert outcome.stop_reason.startswith(f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed")
    assert outcome.best is None


def test_patience_stops_after_trials_without_improvement(tmp_path):
    worse = iter(range(100))
    bench = FakeBench(ipj=lambda c: 100.0 - next(worse))  # the baseline is the best there will be
    outcome = Search(make_job(tmp_path), SearchSettings(trials=20, patience=3)).run(bench)
    assert len(bench.calls) == 4
    assert outcome.stop_reason == "no improvement in 3 trials (--patience)"


def test_wall_time_budget(tmp_path):
    clock = Clock()
    bench = FakeBench(clock=clock)  # every measurement takes 100 s on this clock
    outcome = Search(make_job(tmp_path), SearchSettings(trials=20, timeout_s=250), clock=clock).run(bench)
    assert len(bench.calls) == 3
    assert outcome.stop_reason == "timeout (250 s)"


def test_repeats_are_pooled_saved_in_the_study_and_not_measured_again_on_resume(tmp_path):
    job = make_job(tmp_path)
    def ipj(c: TrialConfig) -> float:  # the top 3 (batching) stay clear of the rest after the repeats' 0.9x
        return efficiency(c) + (5.0 if c.dynamic_batching else 0.0)

    bench = FakeBench(ipj=ipj)
    outcome = Search(job, SearchSettings(trials=4, repeats=3)).run(bench)
    top = sorted(outcome.results, key=lambda r: -bench.ipj(r.config))[:3]  # the ranking before the repeats
    assert sorted(bench.remeasured) == sorted([r.number for r in top] * 2)
    assert sorted(outcome.repeated) == sorted(r.number for r in top)
    for result in top:
        assert result.measurement.repeats == 3 and result.measurement.inferences_per_j.n == 9  # 3 windows x 3 runs
        record = json.loads(paths.trial_record_path(tmp_path, result.number).read_text())["trial"]
        assert record["measurement"]["repeats"] == 3
    saved = study_of(tmp_path).user_attrs[REPEATED_ATTR]
    assert sorted(int(n) for n in saved) == sorted(r.number for r in top)

    again = FakeBench(ipj=ipj)
    resumed = Search(job, SearchSettings(trials=4, repeats=3, resume=True)).run(again)
    assert again.calls == [] and again.remeasured == []  # nothing measured twice
    assert {r.number: r.measurement.repeats for r in resumed.results} == \
        {r.number: r.measurement.repeats for r in outcome.results}
    assert sorted(resumed.repeated) == sorted(outcome.repeated)


def test_a_resumed_study_queues_nothing_again(tmp_path):
    """The baseline and the first configs are queued once, when the study is created; a resume continues it."""
    job = make_job(tmp_path)
    Search(job, SearchSettings(trials=5)).run(FakeBench())
    queued = [t.number for t in study_of(tmp_path).trials if t.user_attrs.get("baseline") or t.user_attrs.get("first")]
    resumed = Search(job, SearchSettings(trials=7, resume=True)).run(FakeBench())
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials if t.user_attrs.get("baseline") or t.user_attrs.get("first")] == queued
    assert len(resumed.results) == 7 and resumed.duplicates == 0


def test_an_interrupted_trial_is_failed_queued_and_measured_on_resume(tmp_path):
    job = make_job(tmp_path)
    first = FakeBench(interrupt_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        Search(job, SearchSettings(trials=4)).run(first)
    interrupted = first.calls[2][1]
    states = [t.state for t in study_of(tmp_path).get_trials()]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 1
    waiting = study_of(tmp_path).get_trials(states=(TrialState.WAITING,))
    assert interrupted in [job.space.for_model(True).sample(optuna.trial.FixedTrial(t.user_attrs[QUEUED_ATTR]))
                           for t in waiting]  # queued again for --resume (beside the first trials not yet run)

    second = FakeBench()
    outcome = Search(job, SearchSettings(trials=4, resume=True)).run(second)
    assert len(outcome.results) == 4
    assert interrupted in [c for _, c in second.calls]  # the interrupted config is measured on resume
    measured_before = {c.key() for _, c in first.calls[:2]}
    assert not measured_before & {c.key() for _, c in second.calls}  # finished trials are kept, not re-measured


def test_a_trial_left_running_by_a_killed_run_is_failed_through_the_public_api(tmp_path):
    job = make_job(tmp_path)
    Search(job, SearchSettings(trials=2)).run(FakeBench())
    killed = study_of(tmp_path)
    orphan = killed.ask({"instance_count": optuna.distributions.IntDistribution(1, 4)})  # never told: RUNNING
    seen: list[events.Event] = []
    bench = FakeBench()
    outcome = Search(job, SearchSettings(trials=3, resume=True), seen.append).run(bench)
    assert events.TrialsRecovered(1) in seen
    assert study_of(tmp_path).trials[orphan.number].state == TrialState.FAIL
    assert len(outcome.results) == 3 and len(bench.calls) == 1


def test_a_storage_failure_stops_the_search_but_a_bug_is_not_called_one(tmp_path, monkeypatch):
    import tuner.study

    def disk_full(path, document):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(tuner.study, "write_json", disk_full)
    with pytest.raises(StorageError, match=r"cannot save trial 0: .*trial-0000.json: No space left on device"):
        Search(make_job(tmp_path / "a"), SearchSettings(trials=2)).run(FakeBench())

    def bug(path, document):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(tuner.study, "write_json", bug)
    with pytest.raises(TypeError):  # a bug surfaces as itself, never as "cannot save trial"
        Search(make_job(tmp_path / "b"), SearchSettings(trials=2)).run(FakeBench())


def test_each_stopping_rule_and_its_message():
    history: dict[int, list[TrialResult]] = {}

    def measured(rule: Stopping, failed: bool = False, ipj: float = 1.0) -> None:
        config = TrialConfig(instance_count=1)
        m = None if failed else fake_measurement(config, ipj)
        result = TrialResult(rule.measured, config, m, "refused" if failed else None, violations(m, Constraints()))
        results = history.setdefault(id(rule), [])
        results.append(result)
        rule.record_measured(result, results)

    assert Stopping(3).reason() is None
    budget = Stopping(2)
    measured(budget)
    measured(budget)
    assert budget.reason() == "trial budget reached (2 configs measured)"
    assert Stopping(5).reason(sampler_exhausted=True) == "grid exhausted (0 distinct configs measured)"
    grid = Stopping(5, grid_size=1)
    measured(grid)
    assert grid.reason() == "grid exhausted (1 distinct configs measured)"
    clock = Clock()
    timed = Stopping(5, timeout_s=10, clock=clock)
    clock.now = 9.9
    assert timed.reason() is None
    clock.now = 10.0
    assert timed.reason() == "timeout (10 s)"
    patient = Stopping(10, patience=2)
    measured(patient, ipj=5.0)
    measured(patient, ipj=4.0)
    assert patient.reason() is None
    measured(patient, ipj=6.0)  # a new best resets the count
    measured(patient, ipj=4.0)
    assert patient.reason() is None
    measured(patient, ipj=3.0)
    assert patient.reason() == "no improvement in 2 trials (--patience)"
    duplicates = Stopping(5)
    for _ in range(MAX_CONSECUTIVE_DUPLICATES):
        duplicates.record_duplicate()
    assert duplicates.reason() == "space exhausted: the sampler proposed 40 measured configs in a row"
    measured(duplicates)
    assert duplicates.reason() is None  # a measured config resets the run of duplicates
    failures = Stopping(50)
    for _ in range(MAX_CONSECUTIVE_FAILURES):
        measured(failures, failed=True)
    assert failures.reason() == f"{MAX_CONSECUTIVE_FAILURES} trials in a row failed (see failure_reason in trials.csv)"


def test_a_summary_that_cannot_be_written_is_one_line_naming_the_file(tmp_path):
    from tuner.outputs import write_outputs
    from tuner.search import SearchOutcome

    (tmp_path / "out").write_text("a file where the output folder should be")
    job = make_job(tmp_path / "out")
    outcome = SearchOutcome(results=[], baseline=None, best=None, stop_reason="", storage_url="", study_name="s")
    with pytest.raises(StorageError, match=rf"^cannot write {tmp_path / 'out' / 'summary.json'}: .*; search stopped"):
        write_outputs(job, outcome)


def test_a_full_disk_anywhere_in_the_loop_stops_the_search_with_one_line(tmp_path):
    import errno

    class FullDisk(FakeBench):
        def __init__(self, err: int):
            super().__init__()
            self.err = err

        def measure(self, config, number, screen=None):
            if number == 1:
                raise OSError(self.err, os.strerror(self.err))
            return super().measure(config, number, screen)

    with pytest.raises(StorageError, match=rf"^cannot save to {tmp_path / 'a'}: No space left on device; search stopped"):
        Search(make_job(tmp_path / "a"), SearchSettings(trials=3)).run(FullDisk(errno.ENOSPC))
    assert paths.trial_record_path(tmp_path / "a", 0).exists()  # what finished is saved
    with pytest.raises(FileNotFoundError):  # any other OSError is not called a storage failure
        Search(make_job(tmp_path / "b"), SearchSettings(trials=3)).run(FullDisk(errno.ENOENT))


def test_a_study_the_database_refuses_names_the_database_error_not_optunas_wrapper():
    from tuner.study import storage_error

    try:
        try:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")
        except RuntimeError as inner:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from inner
    except optuna.exceptions.StorageInternalError as exc:
        message = str(storage_error("trial 1", exc))
    assert message == "cannot save trial 1 to the study: (sqlite3.OperationalError) database or disk is full; search stopped"


def test_after_the_baseline_the_first_trials_batch_every_request_in_flight(tmp_path):
    bench = FakeBench(ipj=lambda c: 1.0)  # a flat landscape: the order comes from the queue, not the sampler
    Search(make_job(tmp_path), SearchSettings(trials=6, seed=1)).run(bench)
    configs = [c for _, c in bench.calls]
    assert configs[0] == trial_of(BASE)
    first = configs[1:4]
    assert [c.instance_count for c in first] == [1, 2, 3]
    assert all(c.dynamic_batching and (c.max_batch_size or 0) >= 4 for c in first)  # concurrency 4 in flight
    trials = study_of(tmp_path).get_trials()
    assert [bool(t.user_attrs.get("first")) for t in trials[:4]] == [False, True, True, True]


def test_a_grid_search_queues_no_first_trials(tmp_path):
    bench = FakeBench()
    Search(make_job(tmp_path, TWO_CONFIGS), SearchSettings(trials=5, sampler="grid")).run(bench)
    assert not any(t.user_attrs.get("first") for t in study_of(tmp_path).get_trials())
