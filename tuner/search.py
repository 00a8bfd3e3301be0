"""The search loop: until its policy says stop, ask a trial and run one step on it (sample, dedupe, measure, record,
tell); then --repeats on the top configs. Every mode runs this loop; the policy is what differs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuner.bench import TrialBench
from tuner.events import Progress, RepeatFailed, RepeatStarted, TrialFinished, TrialsRecovered, emit
from tuner.job import SearchJob, SearchSettings
from tuner.measure import pool_measurements
from tuner.model_config import own_config
from tuner.objective import best_trial, objective_value
from tuner.policy import LocalPolicy, Policy, SharedPolicy
from tuner.results import Hardware, TrialResult
from tuner.sampling import grid_params
from tuner.step import TrialStep
from tuner.study import BASELINE_ATTR, DISK_FULL_ERRNOS, DISK_FULL_ERRORS, FIRST_ATTR, StudyStore, storage_error


@dataclass
class SearchOutcome:
    """Everything the search measured, what it chose, and why it stopped."""

    results: list[TrialResult]
    baseline: TrialResult | None
    best: TrialResult | None
    stop_reason: str
    storage_url: str
    study_name: str
    duplicates: int = 0
    server_restarts: int = 0
    idle_power_w: dict[str, float] = field(default_factory=dict)
    repeated: list[int] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    meter_details: dict[str, Any] = field(default_factory=dict)
    sharing: dict[str, Any] | None = None  # a set of models: what serving them on one server saves (modelset)


class SearchStopped(Exception):
    """The search's stop event was set (another slot failed, or Ctrl-C in the main thread): no trial is asked."""


class Search:
    """One search run on one bench: open the study, loop ask -> step until the policy stops, repeat the top configs,
    hand each new outcome to on_result."""

    def __init__(self, job: SearchJob, settings: SearchSettings, progress: Progress | None = None,
                 on_result: Callable[[SearchOutcome], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None) -> None:
        self.job = job
        self.settings = settings
        self.progress = progress
        self.on_result = on_result
        self.clock = clock
        self.stop = stop  # --parallel: set by the first slot to fail or by Ctrl-C; checked before each ask
        self.store: StudyStore | None = None
        self.policy: Policy | None = None

    def open(self) -> StudyStore:
        """Open the study (once; before a server starts, so a bad --storage or --resume is exit 2 at once), fail what
        a killed run left running, and queue the baseline and first configs of a new study."""
        if self.store is not None:
            return self.store
        self.job.output.mkdir(parents=True, exist_ok=True)
        store = StudyStore.open(self.job, self.settings)
        if self.settings.shared:
            recovered = store.fail_stale(store.heartbeat_settings(self.settings.heartbeat))
        else:
            recovered = store.recover_interrupted()
        if recovered:
            emit(self.progress, TrialsRecovered(recovered))
        if not store.trials():
            self._queue_first(store)
        self.store = store
        return store

    def _queue_first(self, store: StudyStore) -> None:
        """The model's own config first; then a grid's every config, or the first configs worth measuring (not for
        a shared study, whose workers open it at once and would each queue them)."""
        space, baseline = self.job.model_space, own_config(self.job.base)
        # A set's job has a set's space and config (modelset.SetSpace takes a SetConfig where Space takes a TrialConfig).
        store.queue(space.params_of(baseline), **{BASELINE_ATTR: True})  # type: ignore[arg-type]
        if self.settings.sampler == "grid":
            for params in grid_params(space, self.settings.seed):
                store.queue(params)
        elif self.settings.first_trials and not self.settings.shared:
            in_flight = self.job.load.spec.concurrency if self.job.load.auto_max_p99_ms is None else None
            for params in space.first_params(in_flight, baseline)[: max(0, self.settings.trials - 1)]:  # type: ignore[arg-type]
                store.queue(params, **{FIRST_ATTR: True})

    def run(self, bench: TrialBench) -> SearchOutcome:
        """Until a stopping rule fires: ask, run one step, publish; then --repeats on the top configs. A full disk (or
        a study the database refuses) anywhere in the loop stops it with one line; what finished is saved."""
        try:
            return self._run(bench)
        except DISK_FULL_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno not in DISK_FULL_ERRNOS:
                raise
            raise storage_error(f"to {self.job.output}", exc) from None

    def _run(self, bench: TrialBench) -> SearchOutcome:
        store, hardware = self.open(), hardware_of(bench)
        policy = self.policy = self._policy(store, hardware)
        step = TrialStep(self.job, self.settings, store, self.progress)
        while (reason := policy.stop_reason()) is None:
            if self.stop is not None and self.stop.is_set():
                raise SearchStopped("stopped before the next trial: another slot failed or the run was interrupted")
            trial = policy.next_trial()
            if trial is None:
                continue
            with policy.attempt(trial):
                done = step.run(trial, bench, hardware, policy)
            policy.finished(done)
            if done.duplicate_of is None:
                outcome = self._publish(store, policy, bench)
                emit(self.progress, TrialFinished(done.result, outcome.best, len(policy.results), policy.budget))
        if self.settings.shared:  # every worker's results (stop_reason just read them): records in this output
            for result in policy.results:
                store.write_record(result, missing_only=True)
        outcome = self._publish(store, policy, bench, reason, notify=False)
        repeat_top(store, bench, outcome, self.job, self.settings.repeats, self.settings.top_k, self.progress)
        return self._publish(store, policy, bench, reason)

    def _policy(self, store: StudyStore, hardware: Hardware) -> Policy:
        if self.settings.shared:
            return SharedPolicy(store, self.settings, self.job.base, self.job.objective, hardware, self.clock)
        results, duplicates = store.results()
        grid = len(self.job.model_space.grid_configs()) if self.settings.sampler == "grid" else None
        return LocalPolicy(store, self.settings, self.job.base, self.job.objective, grid, self.clock, results,
                           duplicates)

    @property
    def measured_here(self) -> list[int]:
        """Trial numbers this process measured (a shared study has other workers' too)."""
        return self.policy.measured_here if self.policy is not None else []

    def _publish(self, store: StudyStore, policy: Policy, bench: TrialBench, stop_reason: str = "",
                 notify: bool = True) -> SearchOutcome:
        """The outcome so far: best and baseline chosen, the bench's provenance copied; handed to on_result."""
        results = policy.results
        own = own_config(self.job.base)
        baselines = [r for r in results if r.config == own]
        outcome = SearchOutcome(
            results=results, baseline=min(baselines, key=lambda r: r.number) if baselines else None,
            best=best_trial(results, self.job.objective), stop_reason=stop_reason, storage_url=store.url,
            study_name=store.name, duplicates=policy.duplicates, server_restarts=bench.server_restarts,
            idle_power_w=dict(bench.idle_power_w), repeated=store.repeated(), environment=dict(bench.environment),
            meter_details=dict(bench.meter_details))
        if notify and self.on_result is not None:
            self.on_result(outcome)
        return outcome


def repeat_top(store: StudyStore, bench: TrialBench, outcome: SearchOutcome, job: SearchJob, repeats: int,
               top_k: int, progress: Progress | None = None) -> None:
    """--repeats N: measure the top-k feasible configs until each has N measurements; pool and save their windows
    (the outcome's results are replaced by the pooled ones)."""
    if repeats <= 1:
        return
    ranked = sorted((r for r in outcome.results if r.feasible),
                    key=lambda r: -objective_value(r.measurement, job.objective))
    for result in ranked[:top_k]:
        assert result.measurement is not None
        runs = [result.measurement]
        for _ in range(repeats - result.measurement.repeats):
            emit(progress, RepeatStarted(result.number, result.config.describe()))
            again = bench.remeasure(result)
            if again.measurement is None or again.failed:
                emit(progress, RepeatFailed(result.number, (again.failure_reason or "").splitlines()[0]))
                break
            runs.append(again.measurement)
        pooled = pool_measurements(runs, job.measure)
        updated = TrialResult(result.number, result.config, pooled, result.failure_reason,
                              job.violations(pooled), result.hardware)
        outcome.results[outcome.results.index(result)] = updated
        store.save_repeat(updated)


def hardware_of(bench: TrialBench) -> Hardware:
    """What a trial is measured on: host, CPU, GPU model and driver (NVML) and the meters in use."""
    env = bench.environment
    return Hardware(host=socket.gethostname(), cpu_model=env.get("cpu_model"),
                    gpu_model=env.get("gpu_models") or "none", gpu_driver=env.get("gpu_driver"),
                    meters=tuple(sorted(bench.meter_details)))
