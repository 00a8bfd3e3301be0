"""The one trial step (sample -> key -> dedupe -> measure -> record -> tell) with a fake bench, alone on a study and
as a worker of a shared one: a successful, a failed, a duplicate, a screened and a load-tool-failed trial are each
told to Optuna exactly once, in the state that fits; an interrupted one is failed once and queued again."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from tuner.job import SearchSettings
from tuner.objective import violations
from tuner.policy import LocalPolicy, SharedPolicy
from tuner.results import Hardware, TrialConfig, TrialResult
from tuner.step import TrialStep
from tuner.storage import Heartbeat
from tuner.study import DUPLICATE_ATTR, QUEUED_ATTR, StudyStore

from .test_search_loop import FakeBench, fake_measurement, make_job

SPACE = "knobs:\n  instance_count: {type: int, low: 1, high: 4}\n"


class ScriptedBench(FakeBench):
    """instance_count 1 measures, 2 is refused by the server (the config's failure), 3 is screened after a window,
    4 fails the load tool every time (the tool's failure); anything else raises what `raise_on` says."""

    def __init__(self, raise_on: BaseException | None = None) -> None:
        super().__init__()
        self.raise_on = raise_on

    def measure(self, config: TrialConfig, number: int, screen=None) -> TrialResult:
        self.calls.append((number, config))
        count = config.instance_count
        if count == 1:
            m = fake_measurement(config, 50.0)
            return TrialResult(number, config, m, None, violations(m, self.constraints))
        if count == 2:
            return TrialResult(number, config, None, "Triton refused to load mlp", violations(None, self.constraints))
        if count == 3:
            m = dataclasses.replace(fake_measurement(config, 5.0), screened_reason="after 1 window: clearly worse")
            return TrialResult(number, config, m, None, violations(m, self.constraints))
        if count == 4:
            return TrialResult(number, config, None, "load tool failed: export cut short",
                               violations(None, self.constraints), failure_kind="tool")
        assert self.raise_on is not None
        raise self.raise_on


@pytest.fixture
def tells(monkeypatch) -> Counter:
    """Every study.tell, counted by trial number (the boundary with Optuna)."""
    counted: Counter = Counter()
    original = optuna.Study.tell

    def counting(self, trial, *args, **kwargs):
        counted[trial if isinstance(trial, int) else trial.number] += 1
        return original(self, trial, *args, **kwargs)

    monkeypatch.setattr(optuna.Study, "tell", counting)
    return counted


def opened(tmp_path, mode: str):
    """A store and the mode's policy (which is also the step's claim: who measures a config)."""
    job = make_job(tmp_path, SPACE)
    if mode == "local":
        settings = SearchSettings(trials=10)
        store = StudyStore.open(job, settings)
        policy = LocalPolicy(store, settings, job.base, job.objective, None, time.monotonic, [], 0)
    else:
        settings = SearchSettings(trials=10, storage=f"journal://{tmp_path / 's.journal'}", study="s",
                                  heartbeat=Heartbeat(1, 2), poll_s=0.01)
        store = StudyStore.open(job, settings)
        policy = SharedPolicy(store, settings, job.base, job.objective, Hardware(), time.monotonic)
    return job, settings, store, policy


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_each_kind_of_trial_is_told_exactly_once(tmp_path, tells, mode):
    job, settings, store, policy = opened(tmp_path, mode)
    space = job.space.for_model(True)
    for count in (1, 1, 2, 3, 4):  # measured, its duplicate, failed, screened, the tool's failure
        store.study.enqueue_trial(space.params_of(TrialConfig(instance_count=count)))
    bench, step = ScriptedBench(), TrialStep(job, settings, store)
    steps = []
    for _ in range(5):
        trial = store.ask()
        with policy.attempt(trial):
            done = step.run(trial, bench, Hardware(host="here"), policy)
        policy.finished(done)
        steps.append(done)

    trials = store.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.FAIL]
    assert dict(tells) == {t.number: 1 for t in trials}  # one tell per trial, whatever happened to it
    assert [n for n, _ in bench.calls] == [0, 2, 3, 4, 4]  # the duplicate is not measured; the tool is tried twice
    assert steps[1].duplicate_of == 0 and trials[1].user_attrs[DUPLICATE_ATTR] == 0
    assert trials[0].value == pytest.approx(50.0) and trials[2].value == 0.0  # a failed config is data: value 0
    assert steps[3].result.screened and steps[4].result.tool_failure
    assert steps[0].result.hardware == Hardware(host="here")  # the result names what it was measured on
    results, duplicates = store.results()
    assert [r.number for r in results] == [0, 2, 3, 4] and duplicates == 1
    assert sorted(p.name for p in (tmp_path / "trials").glob("*.json")) == [
        "trial-0000.json", "trial-0002.json", "trial-0003.json", "trial-0004.json"]


@pytest.mark.parametrize("mode", ["local", "shared"])
def test_an_interrupted_step_is_failed_once_and_queued_again(tmp_path, tells, mode):
    job, settings, store, policy = opened(tmp_path, mode)
    params = job.space.for_model(True).params_of(TrialConfig(instance_count=1))
    store.queue(params)
    step = TrialStep(job, settings, store)
    trial = store.ask()
    bench = ScriptedBench()
    bench.measure = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())  # Ctrl-C mid-measurement
    with pytest.raises(KeyboardInterrupt), policy.attempt(trial):
        step.run(trial, bench, Hardware(), policy)
    assert dict(tells) == {trial.number: 1}
    assert store.study.get_trials()[trial.number].state == TrialState.FAIL
    waiting = store.trials(TrialState.WAITING)
    assert [t.user_attrs[QUEUED_ATTR] for t in waiting] == [params]  # retried on --resume / by another worker
    assert store.results() == ([], 0)
