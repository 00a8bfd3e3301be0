"""Stop and coordination policies of the search loop: a process alone on its study (the local stopping rules), or one
worker of a shared study (the study's budget, stale-trial recovery, the twin protocol and the hardware check)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from tuner.job import SearchSettings
from tuner.model_config import ModelConfig, effective_key
from tuner.results import Hardware, TrialResult
from tuner.step import StepResult
from tuner.stopping import Stopping
from tuner.storage import Heartbeat
from tuner.study import DECISION_ATTR, EFFECTIVE_KEY_ATTR, HARDWARE_ATTR, WORKER_ATTR, StudyStore, check_hardware


class Policy(Protocol):
    """What the loop asks of a mode: when to stop, the next trial, how to hold it, who measures its config."""

    results: list[TrialResult]
    duplicates: int
    budget: int
    measured_here: list[int]

    def stop_reason(self) -> str | None: ...

    def next_trial(self) -> optuna.Trial | None: ...

    def attempt(self, trial: optuna.Trial) -> AbstractContextManager[None]: ...

    def claim(self, trial: optuna.Trial, key: str | None) -> TrialResult | None: ...

    def finished(self, step: StepResult) -> None: ...


class LocalPolicy:
    """One process alone on its study: trial budget, timeout, patience, grid, duplicates or failures in a row; a
    config is measured once (a load tool's failure says nothing of its config, so it is measured again)."""

    def __init__(self, store: StudyStore, settings: SearchSettings, base: ModelConfig, objective: str,
                 grid_size: int | None, clock: Callable[[], float], results: list[TrialResult],
                 duplicates: int) -> None:
        self.store = store
        self.grid = settings.sampler == "grid"
        self.results, self.duplicates, self.budget = list(results), duplicates, settings.trials
        self.measured_here: list[int] = []
        self.stopping = Stopping(settings.trials, settings.timeout_s, settings.patience, grid_size, clock,
                                 self.results, objective)
        self.by_key = {key: r for r in self.results
                       if not r.tool_failure and (key := effective_key(base, r.config)) is not None}

    def stop_reason(self) -> str | None:
        """A stopping rule's message, or None; a grid stops when none of its configs is left queued."""
        return self.stopping.reason(self.grid and not self.store.trials(TrialState.WAITING))

    def next_trial(self) -> optuna.Trial:
        """A queued trial, else the sampler's proposal."""
        return self.store.ask()

    def attempt(self, trial: optuna.Trial) -> AbstractContextManager[None]:
        """Nothing to hold: no other process waits on this trial."""
        return contextlib.nullcontext()

    def claim(self, trial: optuna.Trial, key: str | None) -> TrialResult | None:
        """This study's earlier result of the config, if any."""
        return self.by_key.get(key) if key is not None else None

    def finished(self, step: StepResult) -> None:
        """Count the step toward the stopping rules; a measured config is reused from now on."""
        if step.duplicate_of is not None:
            self.duplicates += 1
            self.stopping.record_duplicate()
            return
        self.results.append(step.result)
        self.measured_here.append(step.result.number)
        if step.key is not None and not step.result.tool_failure:
            self.by_key[step.key] = step.result
        self.stopping.record_measured(step.result, self.results)


class SharedPolicy:
    """One worker of a shared study: until the study's budget is spent by all workers, ask, dedupe against every
    worker's results (and a config another worker is measuring now), measure with heartbeats."""

    def __init__(self, store: StudyStore, settings: SearchSettings, base: ModelConfig, objective: str,
                 hardware: Hardware, clock: Callable[[], float]) -> None:
        check_hardware(store.study, hardware, settings.allow_mixed_hardware)
        self.store, self.settings, self.base, self.hardware = store, settings, base, hardware
        self.heartbeat = store.heartbeat_settings(settings.heartbeat)
        self.budget = store.budget(settings.trials)
        self.results, self.duplicates = store.results()
        self.measured_here: list[int] = []
        self.stopping = Stopping(self.budget, settings.timeout_s, None, None, clock, self.results, objective,
                                 shared=True)
        self.twins = Twins(store, base, settings.poll_s, self.heartbeat)

    def stop_reason(self) -> str | None:
        """Fail what dead workers left, read every worker's results, then the stopping rules."""
        self.store.fail_stale(self.heartbeat)
        self.results, self.duplicates = self.store.results()
        self.stopping.sync(len(self.results))
        return self.stopping.reason()

    def next_trial(self) -> optuna.Trial | None:
        """The next trial, or None after a wait when the rest of the budget is being measured by others (stay to
        retry it if a worker dies) or when this trial came one over the budget."""
        running = self.store.trials(TrialState.RUNNING)
        if len(self.results) + len(running) >= self.budget and not self.store.trials(TrialState.WAITING):
            time.sleep(self.settings.poll_s)
            return None
        trial = self.store.ask()
        return None if self._over_budget(trial.number) else trial

    def _over_budget(self, number: int) -> bool:
        """Two workers that asked for the budget's last trial at once: the later-numbered one is pruned (it always
        sees the earlier one, which was created first) and its worker goes back to waiting."""
        ahead = [t for t in self.store.trials(TrialState.RUNNING) if t.number < number]
        if len(self.store.results()[0]) + len(ahead) < self.budget:
            return False
        self.store.prune(number)
        return True

    def attempt(self, trial: optuna.Trial) -> AbstractContextManager[None]:
        """The worker beats while it holds the trial, so a dead worker's trial is retried by another."""
        return self.store.heartbeat(trial, self.heartbeat)

    def claim(self, trial: optuna.Trial, key: str | None) -> TrialResult | None:
        """Stamp the trial with this worker and config, then agree with any twin on who measures it."""
        trial.set_user_attr(WORKER_ATTR, worker_identity())
        trial.set_user_attr(HARDWARE_ATTR, self.hardware.to_dict())
        if key is not None:
            trial.set_user_attr(DECISION_ATTR, "")  # a retried trial arrives with its dead attempt's attrs
            trial.set_user_attr(EFFECTIVE_KEY_ATTR, key)
        return self.twins.measured_by_any(trial, key)

    def finished(self, step: StepResult) -> None:
        """Count the step; a measured one joins the results until the next read of the study."""
        if step.duplicate_of is not None:
            self.stopping.record_duplicate()
            return
        self.measured_here.append(step.result.number)
        self.results.append(step.result)
        self.stopping.record_measured(step.result, self.results)


class Twins:
    """Running trials of one config (same effective key) agree on one measurer without a lock: a trial defers to a
    twin that decided "measure" or to an earlier one still undecided; an earlier trial waits for its undecided later
    twins to decide (they never wait for it), so waits point one way and cannot deadlock. A deferrer whose twin ended
    without a result (done elsewhere, or its worker died and was failed as stale) goes back to undecided and reads
    again before it may measure, so two deferrers never take over at once."""

    def __init__(self, store: StudyStore, base: ModelConfig, poll_s: float, heartbeat: Heartbeat) -> None:
        self.store, self.base, self.poll_s, self.heartbeat = store, base, poll_s, heartbeat

    def measured_by_any(self, trial: optuna.Trial, key: str | None) -> TrialResult | None:
        """The result of this config from any worker, or None when this trial is the one to measure it (each twin
        is stamped with its key before this is called)."""
        if key is None:
            return None
        decided = ""
        while (earlier := self._result_of(key)) is None:
            wanted = twin_decision(trial.number, self._choices(trial.number, key))
            if wanted == "measure" and decided == "":
                trial.set_user_attr(DECISION_ATTR, "measure")
                return None
            if wanted == "measure":
                wanted = ""  # from "defer" via "" and one more read, so two deferrers cannot both take over at once
            if wanted != decided:
                trial.set_user_attr(DECISION_ATTR, wanted)
                decided = wanted
            time.sleep(self.poll_s)
            self.store.fail_stale(self.heartbeat)
        return earlier

    def _result_of(self, key: str) -> TrialResult | None:
        for result in self.store.results()[0]:
            if not result.tool_failure and effective_key(self.base, result.config) == key:
                return result
        return None

    def _choices(self, number: int, key: str) -> dict[int, str]:
        """Each running twin's decision so far ("" undecided)."""
        return {t.number: t.user_attrs.get(DECISION_ATTR, "") for t in self.store.trials(TrialState.RUNNING)
                if t.number != number and t.user_attrs.get(EFFECTIVE_KEY_ATTR) == key}


def twin_decision(number: int, choices: dict[int, str]) -> str:
    """What trial `number` should decide given its twins' choices: "defer", "" (wait for a later twin), "measure"."""
    if any(c == "measure" for c in choices.values()) or any(n < number and c == "" for n, c in choices.items()):
        return "defer"
    if any(n > number and c == "" for n, c in choices.items()):
        return ""  # a later twin is deciding; it will defer to this one or has already chosen to measure
    return "measure"


def worker_identity() -> dict[str, Any]:
    """Which process on which machine measures a trial of a shared study."""
    return {"host": socket.gethostname(), "pid": os.getpid()}
