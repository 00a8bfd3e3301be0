"""The Optuna study and the search loop: ask, dedupe, measure on the bench, tell, persist."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from tuner import paths
from tuner.bench import TrialBench
from tuner.errors import BadInput, StorageError
from tuner.events import (
    Progress,
    RepeatFailed,
    RepeatStarted,
    TrialFinished,
    TrialRetried,
    TrialsRecovered,
    TrialStarted,
    emit,
)
from tuner.job import SearchJob, SearchSettings
from tuner.measure import pool_measurements
from tuner.model_config import apply_trial, trial_of
from tuner.objective import best_trial, objective_value, violations
from tuner.pruning import TrialScreen, pruner_for
from tuner.redact import mask_url
from tuner.results import Hardware, Measurement, TrialConfig, TrialResult, write_json
from tuner.space import Space
from tuner.stopping import MAX_CONSECUTIVE_DUPLICATES, Stopping
from tuner.storage import HEARTBEAT_ATTR, Heartbeat, beating, open_storage, quiet

# What a failed save looks like: the file system, or the study's database (Optuna wraps most of its errors).
STORAGE_ERRORS = (OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
DISK_FULL_ERRORS = (OSError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # an OSError only stops the search as storage if one of these
REPEATED_ATTR = "repeated"  # study attribute: trial number -> its pooled --repeats result


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


def make_sampler(name: str, seed: int, space: Space, trials: int, shared: bool = False) -> optuna.samplers.BaseSampler:
    """TPE (default), GP (needs the gp extra), grid or random; constraints come from trial.set_constraint.

    shared: many workers ask at once, so TPE treats running trials as bad (constant_liar) and each worker seeds
    differently (a seed would make every worker propose the same configs)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=None if shared else seed, n_startup_trials=max(2, min(10, trials // 3)),
                                          multivariate=True, constant_liar=shared)
    if shared and name == "random":
        return optuna.samplers.RandomSampler()
    if name == "gp":
        try:
            import scipy  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise BadInput("--sampler gp needs torch and scipy: pip install 'greentune[gp]'") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
    if name == "grid":
        return AskTellGridSampler(space.grid(), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for an ask/tell loop: optuna's version calls study.stop(), which only works inside optimize();
    the search checks is_exhausted() before asking instead."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: Any) -> None:
        """Do not stop the study from inside tell()."""


def study_name(model: str) -> str:
    """The study's name in its storage."""
    return f"greentune-{model}"


EFFECTIVE_KEY_ATTR = "effective_key"  # trial attribute: the config's identity, set before it is measured
DECISION_ATTR = "twin_decision"  # trial attribute: "measure" or "defer" (to a twin measuring the same config); "" undecided
HARDWARE_ATTR = "hardware"  # trial (and study) attribute: host, GPU model, driver and meters of the measurement
WORKER_ATTR = "worker"  # trial attribute: {"host", "pid"} of the worker that measured it
FIRST_ATTR = "first"  # trial attribute: one of the first configs queued after the baseline (Space.first_params)
BUDGET_ATTR = "budget_trials"  # shared study attribute: configs to measure, all workers together


def open_study(job: SearchJob, settings: SearchSettings) -> tuple[optuna.Study, str]:
    """Create the study (or load it with --resume, or join it with --study); see open_study_storage."""
    study, url, _ = open_study_storage(job, settings)
    return study, url


def open_study_storage(job: SearchJob, settings: SearchSettings
                       ) -> tuple[optuna.Study, str, optuna.storages.BaseStorage]:
    """Create the study (or load it with --resume, or join it with --study); refuses to mix a new search into an
    old study, and a worker whose settings differ from the shared study's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = settings.storage or paths.study_url(job.output)
    name = settings.study or study_name(job.model)
    sampler = make_sampler(settings.sampler, settings.seed, job.space, settings.trials, settings.shared)
    storage = open_storage(url, settings.heartbeat if settings.shared else None)
    if not settings.shared:
        existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if name in existing and not settings.resume:
            raise BadInput(
                f"{mask_url(url)} already holds study {name!r}; pass --resume to continue it, or use another "
                "--output/--storage"
            )
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=pruner_for(job.objective, job.measure.stable_windows), load_if_exists=True)
    fingerprint = job.shared_fingerprint() if settings.shared else job.fingerprint()
    if settings.shared:
        recorded = study.user_attrs.get("settings")
        if recorded is None:
            study.set_user_attr("settings", fingerprint)
            study.set_user_attr(BUDGET_ATTR, settings.trials)
        elif recorded != fingerprint:
            changed = [k for k in fingerprint if recorded.get(k) != fingerprint[k]]
            raise BadInput(
                f"--study {name}: this worker's {', '.join(changed)} differ from the study's ("
                + ", ".join(f"{k}={recorded.get(k)}" for k in changed if k not in ("space", "model_config"))
                + "); give the flags and files the study was created with"
            )
        return study, url, storage
    recorded = study.user_attrs.get("settings")
    if recorded is not None and "objective" not in recorded:
        recorded = {**recorded, "objective": "efficiency"}  # studies from before --objective maximised inferences/J
    if recorded is None:
        study.set_user_attr("settings", fingerprint)
    elif recorded != fingerprint:
        changed = [k for k in fingerprint if recorded.get(k) != fingerprint[k]]
        raise BadInput(
            f"--resume: the study was run with different {', '.join(changed)} "
            f"({', '.join(f'{k}={recorded.get(k)}' for k in changed)}); results would not compare"
        )
    return study, url, storage


def recorded_results(study: optuna.Study) -> tuple[list[TrialResult], int]:
    """Results saved in the study and the count of reused duplicates: measured trials (COMPLETE, pooled where --repeats
    ran), screened ones (PRUNED with a result; a shared study's over-budget trials have none) and the load tool's
    failures (FAIL with a result; interrupted trials have none, or one not of the tool)."""
    repeated = study.user_attrs.get(REPEATED_ATTR, {})
    results, duplicates = [], 0
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for trial in study.get_trials(deepcopy=False, states=states):
        if "duplicate_of" in trial.user_attrs:
            if trial.state != TrialState.FAIL:  # a FAIL one was interrupted before it was told
                duplicates += 1
            continue
        record = trial.user_attrs.get("result")
        if record is None or (trial.state == TrialState.FAIL and record.get("failure_kind") != "tool"):
            continue
        results.append(TrialResult.from_dict(repeated.get(str(trial.number), record)))
    return results, duplicates


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed run: mark them failed and queue their params again (retried on resume)."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        requeue(study, trial.params, {k: v for k, v in trial.user_attrs.items() if k == "baseline"})
        count += 1
    return count


def load_shared_study(url: str, name: str) -> optuna.Study:
    """An existing study, for reading (report, export); one line naming --study/--storage when it is not there."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise BadInput(f"--study {name}: no such study in {mask_url(url)}; studies there: {names}") from None


def hardware_of(bench: TrialBench) -> Hardware:
    """What a trial is measured on: host, CPU, GPU model and driver (NVML) and the meters in use."""
    env = bench.environment
    return Hardware(host=socket.gethostname(), cpu_model=env.get("cpu_model"),
                    gpu_model=env.get("gpu_models") or "none", gpu_driver=env.get("gpu_driver"),
                    meters=tuple(sorted(bench.meter_details)))


def check_hardware(study: optuna.Study, hardware: Hardware, allow_mixed: bool) -> None:
    """The first worker's GPU model and meters are the study's; another worker's must match unless
    --allow-mixed-hardware (results on different hardware do not compare; the reports then group them)."""
    recorded = study.user_attrs.get(HARDWARE_ATTR)
    mine = {"gpu_model": hardware.gpu_model, "meters": list(hardware.meters)}
    if recorded is None:
        study.set_user_attr(HARDWARE_ATTR, mine)
        return
    if recorded != mine and not allow_mixed:
        raise BadInput(f"--study {study.study_name}: this worker measures on GPU {mine['gpu_model']} with meters "
                       f"{', '.join(mine['meters']) or 'none'}, the study on GPU {recorded['gpu_model']} with meters "
                       f"{', '.join(recorded['meters']) or 'none'}; pass --allow-mixed-hardware to mix them")


def worker_identity() -> dict[str, Any]:
    """Which process on which machine measures a trial of a shared study."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage, heartbeat: Heartbeat,
               now: float | None = None) -> int:
    """Shared study: fail (and queue again) only the RUNNING trials whose worker stopped beating for the grace
    period; a trial another live worker is measuring is never touched. Returns how many were failed."""
    if isinstance(storage, optuna.storages.RDBStorage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with quiet():
            optuna.storages.fail_stale_trials(study)  # RetryHeartbeatStaleTrialCallback queues each one again
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        return len(before - after)
    now = time.time() if now is None else now
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = float(trial.user_attrs.get(HEARTBEAT_ATTR, started))
        if now - last > heartbeat.grace_s:
            with contextlib.suppress(ValueError, RuntimeError):  # another worker failed it first
                study.tell(trial.number, state=TrialState.FAIL)
                requeue(study, trial.params, {k: v for k, v in trial.user_attrs.items() if k == "baseline"})
                count += 1
    return count


def requeue(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
    """Queue an interrupted trial's params to be asked again, unless they are queued already.

    (Optuna's skip_if_exists would also skip them because the failed trial itself has them.)"""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not any(t.system_attrs.get("fixed_params", t.params) == params for t in waiting):
        study.enqueue_trial(params, user_attrs=user_attrs)


class Search:
    """One search run: ask the sampler, dedupe, measure on the bench, tell the study, persist every result."""

    def __init__(self, job: SearchJob, settings: SearchSettings, progress: Progress | None = None,
                 on_result: Callable[[SearchOutcome], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self.settings = settings
        self.progress = progress
        self.on_result = on_result
        self.clock = clock
        self.space = job.space.for_model(job.base.max_batch_size > 0)
        self._opened: tuple[optuna.Study, SearchOutcome] | None = None
        self._storage: optuna.storages.BaseStorage | None = None
        self.pruner = pruner_for(job.objective, job.measure.stable_windows)  # the study's own, for TrialScreen
        self.measured_here: list[int] = []  # trial numbers this process measured (a shared study has others')

    def run(self, bench: TrialBench) -> SearchOutcome:
        """Until a stopping rule fires: ask, dedupe, measure, tell, persist; then --repeats on the top configs.
        A full disk (or a study the database refuses) anywhere in the loop stops it with one line; what finished
        is saved."""
        try:
            return self._run(bench)
        except DISK_FULL_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno not in DISK_FULL_ERRNOS:
                raise
            raise _storage_error(f"to {self.job.output}", exc) from None

    def _run(self, bench: TrialBench) -> SearchOutcome:
        study, outcome = self.open()
        if self.settings.shared:
            return self._run_shared(study, outcome, bench)
        stopping = Stopping(self.settings.trials, self.settings.timeout_s, self.settings.patience,
                            self._grid_size(), self.clock, outcome.results, self.job.objective)
        # A load tool's failure says nothing of its config: a later proposal of it is measured again.
        by_key = {key: r for r in outcome.results if not r.tool_failure and (key := self._key(r.config)) is not None}
        hardware = hardware_of(bench)
        while (reason := stopping.reason(self._sampler_exhausted(study))) is None:
            trial = study.ask()
            with self._failed_on_error(study, trial):
                sampled = self.space.sample(trial)  # always: registers the params, also the seeded baseline's
                baseline = bool(trial.user_attrs.get("baseline"))
                config = trial_of(self.job.base) if baseline else sampled
                key = self._key(config)
                earlier = by_key.get(key) if key is not None else None
                if earlier is not None:
                    self._record(study, trial, _reuse(earlier, trial.number), duplicate_of=earlier.number)
                    outcome.duplicates += 1
                    stopping.record_duplicate()
                    continue
                emit(self.progress, TrialStarted(trial.number, config.describe(), baseline))
                result = self._measure(bench, config, trial, key, hardware, baseline)
                self._record(study, trial, result)
            outcome.results.append(result)
            if key is not None and not result.tool_failure:
                by_key[key] = result
            stopping.record_measured(result, outcome.results)
            self._publish(outcome, bench)
            emit(self.progress, TrialFinished(result, outcome.best, len(outcome.results), self.settings.trials))
        outcome.stop_reason = reason
        self._repeat_top(study, bench, outcome)
        self._publish(outcome, bench)
        return outcome

    def _run_shared(self, study: optuna.Study, outcome: SearchOutcome, bench: TrialBench) -> SearchOutcome:
        """One worker of a shared study: until the study's budget is spent, ask, dedupe against every worker's
        results (and against a config another worker is measuring now), measure with heartbeats, tell."""
        assert self._storage is not None
        heartbeat, budget = self.settings.heartbeat, int(study.user_attrs.get(BUDGET_ATTR, self.settings.trials))
        hardware = hardware_of(bench)
        check_hardware(study, hardware, self.settings.allow_mixed_hardware)
        started, duplicates_in_row = self.clock(), 0
        while True:
            fail_stale(study, self._storage, heartbeat)
            outcome.results, outcome.duplicates = recorded_results(study)
            if (reason := self._shared_stop(budget, len(outcome.results), started, duplicates_in_row)) is not None:
                break
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if len(outcome.results) + len(running) >= budget and not waiting:
                time.sleep(self.settings.poll_s)  # the rest is being measured; stay to retry it if a worker dies
                continue
            with quiet():
                trial = study.ask()
            if self._over_budget(study, trial.number, budget):
                continue
            with beating(self._storage, trial, heartbeat), self._failed_on_error(study, trial):
                sampled = self.space.sample(trial)
                baseline = bool(trial.user_attrs.get("baseline"))
                config = trial_of(self.job.base) if baseline else sampled
                key = self._key(config)
                trial.set_user_attr(WORKER_ATTR, worker_identity())
                trial.set_user_attr(HARDWARE_ATTR, hardware.to_dict())
                if key is not None:
                    trial.set_user_attr(DECISION_ATTR, "")  # a retried trial arrives with its dead attempt's attrs
                    trial.set_user_attr(EFFECTIVE_KEY_ATTR, key)
                earlier = self._measured_by_any(study, trial.number, key)
                if earlier is not None:
                    self._record(study, trial, _reuse(earlier, trial.number), duplicate_of=earlier.number)
                    duplicates_in_row += 1
                    continue
                emit(self.progress, TrialStarted(trial.number, config.describe(), baseline))
                result = self._measure(bench, config, trial, key, hardware, baseline)
                self._record(study, trial, result)
            duplicates_in_row = 0
            self.measured_here.append(result.number)
            outcome.results.append(result)
            self._publish(outcome, bench)
            emit(self.progress, TrialFinished(result, outcome.best, len(outcome.results), budget))
        outcome.stop_reason = reason
        self._copy_records(outcome.results)
        self._publish(outcome, bench)
        return outcome

    def _copy_records(self, results: list[TrialResult]) -> None:
        """Every worker's results as trial records in this worker's output, so its reports cover the whole study."""
        for result in results:
            path = paths.trial_record_path(self.job.output, result.number)
            if not path.exists():
                try:
                    write_json(path, {"trial": result.to_dict()})
                except OSError as exc:
                    raise _storage_error(f"trial {result.number}", exc) from None

    @staticmethod
    def _over_budget(study: optuna.Study, number: int, budget: int) -> bool:
        """Two workers that asked for the budget's last trial at once: the later-numbered one is pruned (it always
        sees the earlier one, which was created first) and its worker goes back to waiting."""
        measured = len(recorded_results(study)[0])
        ahead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < number]
        if measured + len(ahead) < budget:
            return False
        study.tell(number, state=TrialState.PRUNED)
        return True

    def _shared_stop(self, budget: int, measured: int, started: float, duplicates_in_row: int) -> str | None:
        if measured >= budget:
            return f"study budget reached ({budget} configs measured by all workers)"
        if self.settings.timeout_s is not None and self.clock() - started >= self.settings.timeout_s:
            return f"timeout ({self.settings.timeout_s:.0f} s)"
        if duplicates_in_row >= MAX_CONSECUTIVE_DUPLICATES:
            return f"space exhausted: the sampler proposed {duplicates_in_row} measured configs in a row"
        return None

    def _measured_by_any(self, study: optuna.Study, number: int, key: str | None) -> TrialResult | None:
        """The result of this config from any worker, or None when this trial is the one to measure it.

        Twins (running trials with the same key, each stamped before this is called) agree on one measurer without a
        lock: a trial defers to a twin that decided "measure" or to an earlier one still undecided; an earlier trial
        waits for its undecided later twins to decide (they never wait for it), so waits point one way and cannot
        deadlock. A deferrer whose twin ended without a result (done elsewhere, or its worker died and fail_stale failed
        it) goes back to undecided and reads again before it may measure, so two deferrers never take over at once."""
        if key is None:
            return None
        assert self._storage is not None
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
        decide = functools.partial(self._storage.set_trial_user_attr, trial_id, DECISION_ATTR)
        decided = ""
        while True:
            for result in recorded_results(study)[0]:
                if self._key(result.config) == key and not result.tool_failure:
                    return result
            twins = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.number != number and t.user_attrs.get(EFFECTIVE_KEY_ATTR) == key]
            choices = {t.number: t.user_attrs.get(DECISION_ATTR, "") for t in twins}
            if any(c == "measure" for c in choices.values()) or any(
                    n < number and c == "" for n, c in choices.items()):
                wanted = "defer"
            elif any(n > number and c == "" for n, c in choices.items()):
                wanted = ""  # a later twin is deciding; it will defer to this one or has already chosen to measure
            else:
                wanted = "measure"
            if wanted == "measure" and decided == "":
                decide("measure")
                return None
            if wanted == "measure":
                wanted = ""  # from "defer" via "" and one more read, so two deferrers cannot both take over at once
            if wanted != decided:
                decide(wanted)
                decided = wanted
            time.sleep(self.settings.poll_s)
            fail_stale(study, self._storage, self.settings.heartbeat)

    def open(self) -> tuple[optuna.Study, SearchOutcome]:
        """Open the study (once; before a server starts, so a bad --storage or --resume is exit 2 at once), fail what
        a killed run left running, read back what is measured, seed the baseline."""
        if self._opened is not None:
            return self._opened
        self.job.output.mkdir(parents=True, exist_ok=True)
        study, url, self._storage = open_study_storage(self.job, self.settings)
        if self.settings.shared:
            recovered = fail_stale(study, self._storage, self.settings.heartbeat)
        else:
            recovered = recover_interrupted(study)
        if recovered:
            emit(self.progress, TrialsRecovered(recovered))
        results, duplicates = recorded_results(study)
        if not study.trials:
            baseline = trial_of(self.job.base)
            study.enqueue_trial(self.space.params_of(baseline), user_attrs={"baseline": True})
            # A grid measures everything anyway; workers of a shared study open it at once, and each would queue them.
            if self.settings.first_trials and self.settings.sampler != "grid" and not self.settings.shared:
                for params in self.space.first_params(self._in_flight(), baseline)[: max(0, self.settings.trials - 1)]:
                    study.enqueue_trial(params, user_attrs={FIRST_ATTR: True})
        repeated = sorted(int(n) for n in study.user_attrs.get(REPEATED_ATTR, {}))
        self._opened = study, SearchOutcome(results=results, baseline=None, best=None, stop_reason="", storage_url=url,
                                            study_name=study.study_name, duplicates=duplicates, repeated=repeated)
        return self._opened

    def _in_flight(self) -> int | None:
        """Requests in flight under a fixed closed-loop load (None under --concurrency auto or --request-rate)."""
        load = self.job.load
        return load.spec.concurrency if load.auto_max_p99_ms is None else None

    def _grid_size(self) -> int | None:
        return len(self.space.grid_configs()) if self.settings.sampler == "grid" else None

    @staticmethod
    def _sampler_exhausted(study: optuna.Study) -> bool:
        """A grid sampler with every point asked and nothing queued (an interrupted trial or the baseline)."""
        sampler = study.sampler
        return (isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study)
                and not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _key(self, config: TrialConfig) -> str | None:
        """The effective config's identity (two knob sets that render the same model config are one); None if invalid."""
        try:
            return trial_of(apply_trial(self.job.base, config)).key()
        except BadInput:
            return None

    def _measure(self, bench: TrialBench, config: TrialConfig, trial: optuna.Trial, key: str | None,
                 hardware: Hardware, baseline: bool) -> TrialResult:
        """Measure a valid config on the bench (an invalid one fails without a server), every window reported to the
        trial and, unless it is the baseline, screened; when the load tool fails, once more on a fresh measurement
        (a second failure is the tool's). The result names its hardware."""
        if key is None:
            result = self._invalid(config, trial.number)
        else:
            screen = self._screen(trial, baseline)
            result = bench.measure(config, trial.number, screen=screen)
            if result.tool_failure:
                emit(self.progress, TrialRetried(trial.number, (result.failure_reason or "").splitlines()[0]))
                result = bench.measure(config, trial.number, screen=self._screen(trial, baseline, screen.next_step))
        return dataclasses.replace(result, hardware=result.hardware or hardware)

    def _screen(self, trial: optuna.Trial, baseline: bool, first_step: int = 1) -> TrialScreen:
        """One attempt's screen: reports each window; judges it (pruner, constraints) unless baseline or --no-screening."""
        return TrialScreen(trial, self.pruner, self.job.constraints, self.job.objective,
                           judge=self.settings.screening and not baseline, first_step=first_step)

    def _invalid(self, config: TrialConfig, number: int) -> TrialResult:
        try:
            apply_trial(self.job.base, config)
        except BadInput as exc:
            return TrialResult(number, config, None, failure_reason=f"invalid config: {exc}",
                               violations=violations(None, self.job.constraints))
        raise AssertionError("_invalid called for a valid config")

    @contextlib.contextmanager
    def _failed_on_error(self, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
        """Ctrl-C or a storage error mid-trial: leave nothing RUNNING, and queue the trial to retry on --resume."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                study.tell(trial, state=TrialState.FAIL)
                requeue(study, trial.params, {k: v for k, v in trial.user_attrs.items() if k == "baseline"})
            raise

    def _record(self, study: optuna.Study, trial: optuna.Trial, result: TrialResult,
                duplicate_of: int | None = None) -> None:
        """Persist the result (JSON record, then the study) before the next trial starts."""
        try:
            if duplicate_of is None:
                write_json(paths.trial_record_path(self.job.output, trial.number), {"trial": result.to_dict()})
                trial.set_user_attr("result", result.to_dict())
            else:
                trial.set_user_attr("duplicate_of", duplicate_of)
            trial.set_user_attr("config_key", json.loads(result.config.key()))
            if result.tool_failure:  # nothing is known of the config: the sampler must not learn it as bad
                study.tell(trial, state=TrialState.FAIL)
                return
            for name, value in result.violations.items():
                trial.set_constraint(name, value)
            if result.screened:  # TPE learns a pruned trial from its last intermediate value
                if duplicate_of is not None and result.measurement is not None:
                    for step, value in enumerate(window_values(result.measurement, self.job.objective), 1):
                        trial.report(value, step)
                study.tell(trial, state=TrialState.PRUNED)
                return
            study.tell(trial, objective_value(result.measurement, self.job.objective) if not result.failed else 0.0)
        except STORAGE_ERRORS as exc:
            raise _storage_error(f"trial {trial.number}", exc) from None

    def _repeat_top(self, study: optuna.Study, bench: TrialBench, outcome: SearchOutcome) -> None:
        """--repeats N: measure the top-k feasible configs until each has N measurements; pool and save their windows."""
        if self.settings.repeats <= 1:
            return
        ranked = sorted((r for r in outcome.results if r.feasible), key=lambda r: -objective_value(r.measurement, self.job.objective))
        for result in ranked[: self.settings.top_k]:
            assert result.measurement is not None
            runs = [result.measurement]
            for _ in range(self.settings.repeats - result.measurement.repeats):
                emit(self.progress, RepeatStarted(result.number, result.config.describe()))
                again = bench.remeasure(result)
                if again.measurement is None or again.failed:
                    emit(self.progress, RepeatFailed(result.number, (again.failure_reason or "").splitlines()[0]))
                    break
                runs.append(again.measurement)
            pooled = pool_measurements(runs, self.job.measure)
            updated = TrialResult(result.number, result.config, pooled, result.failure_reason,
                                  violations(pooled, self.job.constraints), result.hardware)
            outcome.results[outcome.results.index(result)] = updated
            if result.number not in outcome.repeated:
                outcome.repeated.append(result.number)
            self._save_repeat(study, updated)

    def _save_repeat(self, study: optuna.Study, result: TrialResult) -> None:
        """The pooled result goes to the trial's record and to the study, so --resume never measures it again."""
        try:
            write_json(paths.trial_record_path(self.job.output, result.number), {"trial": result.to_dict()})
            repeated = dict(study.user_attrs.get(REPEATED_ATTR, {}))
            repeated[str(result.number)] = result.to_dict()
            study.set_user_attr(REPEATED_ATTR, repeated)
        except STORAGE_ERRORS as exc:
            raise _storage_error(f"the repeats of trial {result.number}", exc) from None

    def _publish(self, outcome: SearchOutcome, bench: TrialBench) -> None:
        """Choose best and baseline, copy the bench's provenance, and hand the outcome to on_result."""
        outcome.best = best_trial(outcome.results, self.job.objective)
        baselines = [r for r in outcome.results if r.config == trial_of(self.job.base)]
        outcome.baseline = min(baselines, key=lambda r: r.number) if baselines else None
        outcome.server_restarts = bench.server_restarts
        outcome.idle_power_w = dict(bench.idle_power_w)
        outcome.environment = dict(bench.environment)
        outcome.meter_details = dict(bench.meter_details)
        if self.on_result is not None:
            self.on_result(outcome)


def _reuse(earlier: TrialResult, number: int) -> TrialResult:
    """A duplicate proposal: the earlier trial's result under this trial's number."""
    return TrialResult(number, earlier.config, earlier.measurement, earlier.failure_reason, dict(earlier.violations),
                       earlier.hardware, earlier.failure_kind)


def window_values(measurement: Measurement, objective: str) -> list[float]:
    """The objective per recorded window: inferences per joule (efficiency) or per second (throughput)."""
    if objective == "throughput":
        return [w.throughput_per_s for w in measurement.windows]
    return [w.success_count / w.energy_j for w in measurement.windows if w.energy_j]


def _storage_error(what: str, exc: BaseException) -> StorageError:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return StorageError(f"cannot save {what}: {where}{exc.strerror or exc}; search stopped")
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
    return StorageError(f"cannot save {what} to the study: {str(cause).splitlines()[0]}; search stopped")
