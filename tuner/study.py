"""The study store: the one owner of a search's persistence (the Optuna study, its settings and attributes, every
trial record and the one place a trial is told), through Optuna's public API only."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from tuner import paths
from tuner.errors import BadInput, StorageError
from tuner.job import SearchJob, SearchSettings
from tuner.objective import objective_value, window_values
from tuner.pruning import pruner_for
from tuner.redact import mask_url
from tuner.results import Hardware, TrialResult, write_json
from tuner.sampling import make_sampler
from tuner.storage import HEARTBEAT_ATTR, Heartbeat, beating, open_storage

# What a failed save looks like: the file system, or the study's database (Optuna wraps most of its errors).
STORAGE_ERRORS = (OSError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)
DISK_FULL_ERRORS = (OSError, sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError)
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}  # an OSError only stops the search as storage if one of these

# Trial attributes.
BASELINE_ATTR = "baseline"  # the model's own config, queued first
FIRST_ATTR = "first"  # one of the first configs queued after the baseline (Space.first_params)
QUEUED_ATTR = "queued_params"  # the params a queued trial will be asked with (kept so a requeue is not doubled)
RESULT_ATTR = "result"  # the trial's TrialResult as a dict (absent for a duplicate proposal)
DUPLICATE_ATTR = "duplicate_of"  # a duplicate proposal: the trial whose result it reused
CONFIG_KEY_ATTR = "config_key"  # the knobs that were measured (or reused)
EFFECTIVE_KEY_ATTR = "effective_key"  # the config's identity, set before it is measured (shared studies)
DECISION_ATTR = "twin_decision"  # "measure" or "defer" (to a twin measuring the same config); "" undecided
HARDWARE_ATTR = "hardware"  # host, GPU model, driver and meters of the measurement (also a study attribute)
WORKER_ATTR = "worker"  # {"host", "pid"} of the worker that measured it
# Study attributes.
SETTINGS_ATTR = "settings"  # the fingerprint a resumed or joined study must match
BUDGET_ATTR = "budget_trials"  # shared study: configs to measure, all workers together
REPEATED_ATTR = "repeated"  # trial number -> its pooled --repeats result
SUMMARY_ATTR = "summary"  # shared study: the summary.json body last written by any worker
LATE_ATTR = "measured_as"  # a result kept after another worker failed its trial as stale: that trial's number
HEARTBEAT_SETTINGS_ATTR = "heartbeat"  # shared study: {"interval_s", "grace_s"} every worker uses
KEPT_ATTRS = (BASELINE_ATTR, FIRST_ATTR)  # what an interrupted trial's requeued copy keeps


def study_name(model: str) -> str:
    """The study's name in its storage."""
    return f"greentune-{model}"


class StudyStore:
    """A search's study and output folder: opened once, read and written only here."""

    def __init__(self, study: optuna.Study, url: str, output: Path | None = None,
                 objective: str = "efficiency") -> None:
        self.study = study
        self.url = url
        self.output = output
        self.objective = objective

    @classmethod
    def open(cls, job: SearchJob, settings: SearchSettings) -> StudyStore:
        """Create the study (or load it with --resume, or join it with --study); refuses to mix a new search into an
        old study, and a worker whose settings differ from the shared study's."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        url = settings.storage or paths.study_url(job.output)
        name = settings.study or study_name(job.model)
        storage = open_storage(url)
        if not settings.shared and name in _study_names(storage) and not settings.resume:
            raise BadInput(f"{mask_url(url)} already holds study {name!r}; pass --resume to continue it, or use "
                           "another --output/--storage")
        study = optuna.create_study(
            storage=storage, study_name=name, direction="maximize", load_if_exists=True,
            sampler=make_sampler(settings.sampler, settings.seed, settings.trials, settings.shared),
            pruner=pruner_for(job.objective, job.measure.stable_windows))
        store = cls(study, url, job.output, job.objective)
        if settings.shared:
            check_settings(store.study, job.shared_fingerprint(), f"--study {name}: this worker's",
                           "differ from the study's", "; give the flags and files the study was created with",
                           {BUDGET_ATTR: settings.trials,
                            HEARTBEAT_SETTINGS_ATTR: {"interval_s": settings.heartbeat.interval_s,
                                                      "grace_s": settings.heartbeat.grace_s}})
        else:
            check_settings(store.study, job.fingerprint(), "--resume: the study was run with different", "",
                           "; results would not compare", {})
        return store

    @classmethod
    def read(cls, url: str, name: str) -> StudyStore:
        """An existing study, for reading (report, export); one line naming --study/--storage when it is not there."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(url)
        if name not in _study_names(storage):
            names = ", ".join(_study_names(storage)) or "none"
            raise BadInput(f"--study {name}: no such study in {mask_url(url)}; studies there: {names}")
        return cls(optuna.load_study(study_name=name, storage=storage), url)

    @property
    def name(self) -> str:
        """The study's name in its storage."""
        return self.study.study_name

    def budget(self, default: int) -> int:
        """A shared study's budget (configs, all workers together), as its creator set it."""
        return int(self.study.user_attrs.get(BUDGET_ATTR, default))

    def heartbeat_settings(self, default: Heartbeat) -> Heartbeat:
        """A shared study's heartbeat interval and grace period as its creator set them: every worker uses the same,
        so none fails another's live trial for beating slower than it expects (default: a study from before)."""
        recorded = self.study.user_attrs.get(HEARTBEAT_SETTINGS_ATTR)
        return Heartbeat(int(recorded["interval_s"]), int(recorded["grace_s"])) if recorded else default

    def trials(self, *states: TrialState) -> list[FrozenTrial]:
        """The study's trials in these states (every trial when none is named)."""
        return self.study.get_trials(deepcopy=False, states=states or None)

    def results(self) -> tuple[list[TrialResult], int]:
        """Results saved in the study and the count of reused duplicates (recorded_results)."""
        return recorded_results(self.study)

    def repeated(self) -> list[int]:
        """Trial numbers whose results pool --repeats measurements."""
        return sorted(int(n) for n in self.study.user_attrs.get(REPEATED_ATTR, {}))

    def summary(self) -> dict[str, Any] | None:
        """The summary.json body a worker last saved in the study (None before any trial finished)."""
        summary: dict[str, Any] | None = self.study.user_attrs.get(SUMMARY_ATTR)
        return summary

    # Queueing and asking.

    def queue(self, params: dict[str, Any], **attrs: Any) -> None:
        """Queue params to be asked next (in order), unless the same params are queued already."""
        if not any(t.user_attrs.get(QUEUED_ATTR, t.params) == params for t in self.trials(TrialState.WAITING)):
            self.study.enqueue_trial(params, user_attrs={**attrs, QUEUED_ATTR: params})

    def ask(self) -> optuna.Trial:
        """The next trial: a queued one first, else the sampler's proposal."""
        return self.study.ask()

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial, heartbeat: Heartbeat | None) -> Iterator[None]:
        """While the block runs, the trial's worker beats (shared studies; nothing without a heartbeat)."""
        with beating(trial, heartbeat):
            yield

    # Telling: every state change of a trial goes through _tell.

    def _tell(self, trial: optuna.Trial | int, state: TrialState, value: float | None = None) -> None:
        """The one place a trial is told (Optuna's public study.tell)."""
        self.study.tell(trial, value, state=state)

    def record(self, trial: optuna.Trial, result: TrialResult, duplicate_of: int | None = None) -> None:
        """Persist the result (JSON record, then the study) and tell the trial once, before the next trial starts:
        FAIL for the load tool's failure (the sampler must not learn its config as bad), PRUNED for a screened trial
        (TPE learns it from its last reported window), else the objective (0 for a failed config)."""
        try:
            if duplicate_of is None:
                self.write_record(result)
                trial.set_user_attr(RESULT_ATTR, result.to_dict())
            else:
                trial.set_user_attr(DUPLICATE_ATTR, duplicate_of)
            trial.set_user_attr(CONFIG_KEY_ATTR, json.loads(result.config.key()))
            if not result.tool_failure:
                for name, amount in result.violations.items():
                    trial.set_constraint(name, amount)
                if result.screened and duplicate_of is not None and result.measurement is not None:
                    for step, window in enumerate(window_values(result.measurement, self.objective), 1):
                        trial.report(window, step)
            self._tell(trial, *self._final_state(result))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._keep_late(trial, result, duplicate_of)
        except ValueError as exc:  # Optuna's tell of a trial already finished (failed as stale, or, on SQLite, which
            if not str(exc).startswith("Cannot tell a "):  # has no row lock, a queued trial two workers both took)
                raise
            stored = self.study.get_trials(deepcopy=False)[trial.number].user_attrs.get(RESULT_ATTR)
            if json.dumps(stored, sort_keys=True) != json.dumps(result.to_dict(), sort_keys=True):
                self._keep_late(trial, result, duplicate_of)  # unless the finished trial holds this very result
        except STORAGE_ERRORS as exc:
            raise storage_error(f"trial {trial.number}", exc) from None

    def _final_state(self, result: TrialResult) -> tuple[TrialState, float | None]:
        if result.tool_failure:
            return TrialState.FAIL, None
        if result.screened:
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, 0.0 if result.failed else objective_value(result.measurement, self.objective)

    def _keep_late(self, trial: optuna.Trial, result: TrialResult, duplicate_of: int | None) -> None:
        """Another worker failed this trial as stale while it was measured (clocks apart, or a stall longer than the
        grace period): keep the measurement on a finished copy of the trial (its record names the trial number it
        was measured as); the retried copy then reuses it instead of measuring again."""
        if duplicate_of is not None:
            return  # nothing was measured
        state, value = self._final_state(result)
        attrs = {**trial.user_attrs, RESULT_ATTR: result.to_dict(), CONFIG_KEY_ATTR: json.loads(result.config.key()),
                 LATE_ATTR: trial.number}
        self.study.add_trial(optuna.trial.create_trial(state=state, value=value, params=trial.params,
                                                       distributions=trial.distributions, user_attrs=attrs))

    @contextlib.contextmanager
    def failed_on_error(self, trial: optuna.Trial) -> Iterator[None]:
        """Ctrl-C or a storage error mid-trial: leave nothing RUNNING, and queue the trial to retry on --resume."""
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                self._fail_and_requeue(trial.number, trial.params, trial.user_attrs)
            raise

    def _fail_and_requeue(self, number: int, params: dict[str, Any], attrs: dict[str, Any]) -> None:
        self._tell(number, TrialState.FAIL)
        self.queue(params, **{k: v for k, v in attrs.items() if k in KEPT_ATTRS})

    def prune(self, number: int) -> None:
        """End a trial that will not be measured (a shared study's budget was spent by others meanwhile)."""
        self._tell(number, TrialState.PRUNED)

    def recover_interrupted(self) -> int:
        """Trials left RUNNING by a killed run: mark them failed and queue their params again (retried on resume)."""
        running = self.trials(TrialState.RUNNING)
        for trial in running:
            self._fail_and_requeue(trial.number, trial.params, trial.user_attrs)
        return len(running)

    def fail_stale(self, heartbeat: Heartbeat, now: float | None = None) -> int:
        """Shared study: fail (and queue again) only the RUNNING trials whose worker stopped beating for the grace
        period; a trial another live worker is measuring is never touched. Returns how many were failed."""
        now = time.time() if now is None else now
        count = 0
        for trial in self.trials(TrialState.RUNNING):
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if now - float(trial.user_attrs.get(HEARTBEAT_ATTR, started)) > heartbeat.grace_s:
                with contextlib.suppress(ValueError, RuntimeError):  # another worker failed it first
                    self._fail_and_requeue(trial.number, trial.params, trial.user_attrs)
                    count += 1
        return count

    # Study attributes and files.

    def save_repeat(self, result: TrialResult) -> None:
        """A --repeats pooled result goes to the trial's record and to the study, so --resume never measures it again."""
        try:
            self.write_record(result)
            repeated = dict(self.study.user_attrs.get(REPEATED_ATTR, {}))
            repeated[str(result.number)] = result.to_dict()
            self.study.set_user_attr(REPEATED_ATTR, repeated)
        except STORAGE_ERRORS as exc:
            raise storage_error(f"the repeats of trial {result.number}", exc) from None

    def save_summary(self, document: dict[str, Any]) -> None:
        """Keep the summary in the study (storage URL left out), so a report or export needs nothing but the study."""
        self.study.set_user_attr(SUMMARY_ATTR, {**document, "study": {**document["study"], "storage": None}})

    def write_record(self, result: TrialResult, output: Path | None = None, missing_only: bool = False) -> None:
        """OUTPUT/trials/trial-NNNN.json for one result (missing_only: keep a record already there)."""
        path = paths.trial_record_path(output or self._output(), result.number)
        if missing_only and path.exists():
            return
        try:
            write_json(path, {"trial": result.to_dict()})
        except OSError as exc:
            raise storage_error(f"trial {result.number}", exc) from None

    def _output(self) -> Path:
        if self.output is None:
            raise ValueError("this study store was opened for reading; give the output folder")
        return self.output


def check_settings(study: optuna.Study, fingerprint: dict[str, Any], prefix: str, verb: str, suffix: str,
                   first: dict[str, Any]) -> None:
    """Record the study's settings on first open; after that, one line naming what differs (BadInput)."""
    recorded = study.user_attrs.get(SETTINGS_ATTR)
    if recorded is None:
        study.set_user_attr(SETTINGS_ATTR, fingerprint)
        for key, value in first.items():
            study.set_user_attr(key, value)
        recorded = study.user_attrs[SETTINGS_ATTR]  # a worker that created it at the same moment wrote last
    if "objective" not in recorded:  # studies from before --objective maximised inferences/J
        recorded = {**recorded, "objective": "efficiency"}
    changed = [k for k in fingerprint if recorded.get(k) != fingerprint[k]]
    if changed:
        shown = ", ".join(f"{k}={recorded.get(k)}" for k in changed if k not in ("space", "model_config"))
        verb_text = f" {verb}" if verb else ""
        raise BadInput(f"{prefix} {', '.join(changed)}{verb_text} ({shown}){suffix}")


def check_hardware(study: optuna.Study, hardware: Hardware, allow_mixed: bool) -> None:
    """The first worker's GPU model and meters are the study's; another worker's must match unless
    --allow-mixed-hardware (results on different hardware do not compare; the reports then group them)."""
    recorded = study.user_attrs.get(HARDWARE_ATTR)
    mine = {"gpu_model": hardware.gpu_model, "meters": list(hardware.meters)}
    if recorded is None:
        study.set_user_attr(HARDWARE_ATTR, mine)
    elif recorded != mine and not allow_mixed:
        raise BadInput(f"--study {study.study_name}: this worker measures on GPU {mine['gpu_model']} with meters "
                       f"{', '.join(mine['meters']) or 'none'}, the study on GPU {recorded['gpu_model']} with "
                       f"meters {', '.join(recorded['meters']) or 'none'}; pass --allow-mixed-hardware to mix them")


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances (fANOVA) over the completed trials, and a note on what they are."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}, f"needs at least 3 completed trials ({len(complete)} so far)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna warns about sparse regimes; the note says what this is
        values = optuna.importance.get_param_importances(study)
    return {k: float(v) for k, v in values.items() if math.isfinite(v)}, "Optuna fANOVA importance evaluator"

def recorded_results(study: optuna.Study) -> tuple[list[TrialResult], int]:
    """Results saved in a study and the count of reused duplicates: measured trials (COMPLETE, pooled where --repeats
    ran), screened ones (PRUNED with a result; a shared study's over-budget trials have none) and the load tool's
    failures (FAIL with a result; interrupted trials have none, or one not of the tool)."""
    repeated = study.user_attrs.get(REPEATED_ATTR, {})
    results, duplicates = [], 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        if DUPLICATE_ATTR in trial.user_attrs:
            duplicates += trial.state != TrialState.FAIL  # a FAIL one was interrupted before it was told
            continue
        record = trial.user_attrs.get(RESULT_ATTR)
        if record is None or (trial.state == TrialState.FAIL and record.get("failure_kind") != "tool"):
            continue
        results.append(TrialResult.from_dict(repeated.get(str(trial.number), record)))
    return results, duplicates


def _study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def storage_error(what: str, exc: BaseException) -> StorageError:
    """A failed save as one line: the file and the OS's reason, or the database's first line."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return StorageError(f"cannot save {what}: {where}{exc.strerror or exc}; search stopped")
    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ else exc
    return StorageError(f"cannot save {what} to the study: {str(cause).splitlines()[0]}; search stopped")


def reuse(earlier: TrialResult, number: int) -> TrialResult:
    """A duplicate proposal: the earlier trial's result under this trial's number."""
    return dataclasses.replace(earlier, number=number, violations=dict(earlier.violations))
