"""One trial step, the same in every mode: sample -> key -> dedupe -> measure -> record -> tell (the last two by
the study store, which tells each trial exactly once)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import optuna

from tuner.bench import TrialBench
from tuner.errors import BadInput
from tuner.events import Progress, TrialRetried, TrialStarted, emit
from tuner.job import SearchJob, SearchSettings
from tuner.model_config import check_config, effective_key, own_config
from tuner.pruning import TrialScreen, pruner_for
from tuner.results import Hardware, SetConfig, TrialConfig, TrialResult
from tuner.study import BASELINE_ATTR, StudyStore, reuse


class Claim(Protocol):
    """Who measures a config: an earlier result to reuse, or None when this trial is the one to measure it."""

    def claim(self, trial: optuna.Trial, key: str | None) -> TrialResult | None: ...


@dataclass(frozen=True)
class StepResult:
    """What one step did: the trial's result, and the trial whose result it reused (None when it measured)."""

    result: TrialResult
    key: str | None  # the effective config's identity (None: invalid for this model)
    duplicate_of: int | None = None


class TrialStep:
    """Runs one asked trial to its recorded, told end; a failure mid-step leaves it failed and queued again."""

    def __init__(self, job: SearchJob, settings: SearchSettings, store: StudyStore,
                 progress: Progress | None = None) -> None:
        self.job = job
        self.settings = settings
        self.store = store
        self.progress = progress
        self.space = job.model_space
        self.pruner = pruner_for(job.objective, job.measure.stable_windows)  # the study's own, for TrialScreen

    def run(self, trial: optuna.Trial, bench: TrialBench, hardware: Hardware, claim: Claim) -> StepResult:
        """Sample the trial's config, reuse an earlier result of it or measure it, then record and tell."""
        with self.store.failed_on_error(trial):
            sampled = self.space.sample(trial)  # always: registers the params, also the queued baseline's
            baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
            config = own_config(self.job.base) if baseline else sampled
            key = effective_key(self.job.base, config)
            earlier = claim.claim(trial, key)
            if earlier is not None:
                step = StepResult(reuse(earlier, trial.number), key, earlier.number)
            else:
                emit(self.progress, TrialStarted(trial.number, config.describe(), baseline))
                result = self.measure(bench, config, trial, key is not None, baseline)
                step = StepResult(dataclasses.replace(result, hardware=result.hardware or hardware), key)
            self.store.record(trial, step.result, step.duplicate_of)
        return step

    def measure(self, bench: TrialBench, config: TrialConfig | SetConfig, trial: optuna.Trial, valid: bool,
                baseline: bool) -> TrialResult:
        """Measure a valid config on the bench (an invalid one fails without a server), every window reported to the
        trial and, unless it is the baseline, screened; when the load tool fails, once more on a fresh measurement
        (a second failure is the tool's)."""
        if not valid:
            return self.invalid(config, trial.number)
        screen = self.screen(trial, baseline)
        result = bench.measure(config, trial.number, screen=screen)
        if result.tool_failure:
            emit(self.progress, TrialRetried(trial.number, (result.failure_reason or "").splitlines()[0]))
            result = bench.measure(config, trial.number, screen=self.screen(trial, baseline, screen.next_step))
        return result

    def screen(self, trial: optuna.Trial, baseline: bool, first_step: int = 1) -> TrialScreen:
        """One attempt's screen: reports each window; judges it (pruner, constraints) unless baseline or --no-screening."""
        return TrialScreen(trial, self.pruner, self.job.constraints, self.job.objective,
                           judge=self.settings.screening and not baseline, first_step=first_step)

    def invalid(self, config: TrialConfig | SetConfig, number: int) -> TrialResult:
        """A config the model cannot take: failed, with the reason, measured on nothing."""
        try:
            check_config(self.job.base, config)
        except BadInput as exc:
            return TrialResult(number, config, None, failure_reason=f"invalid config: {exc}",
                               violations=self.job.violations(None))
        raise AssertionError("invalid() called for a valid config")
