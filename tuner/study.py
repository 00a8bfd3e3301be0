"""The Optuna study: storage, sampler with constraints, baseline seeding, dedupe, budgets, server restarts."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.errors import (
    BadInput,
    GreentuneError,
    LoadGenerationError,
    MeterUnavailable,
    ModelLoadError,
    ServerDied,
    ServerError,
    StorageError,
)
from tuner.load import LoadSpec
from tuner.measure import (
    InputSource,
    MeasureSettings,
    Progress,
    load_trial,
    measure_auto_concurrency,
    measure_idle,
    measure_trial,
    pool_measurements,
)
from tuner.meters.select import select_meters
from tuner.model_config import ModelConfig, apply_trial, trial_of
from tuner.objective import Constraints, best_trial, score, violations
from tuner.results import TrialConfig, TrialResult, write_json
from tuner.server.base import Server
from tuner.space import Space

SAMPLERS = ("tpe", "gp", "grid", "random")
MAX_CONSECUTIVE_DUPLICATES = 40
MAX_SERVER_RESTARTS = 3


@dataclass(frozen=True)
class SearchSettings:
    """Budgets and sampler: --trials, --timeout, --patience, --sampler, --seed, --storage, --resume."""

    trials: int = 12
    timeout_s: float | None = None
    patience: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    resume: bool = False
    repeats: int = 1
    top_k: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.repeats <= 20:
            raise BadInput(f"--repeats: expected 1 to 20, got {self.repeats}")
        if not 1 <= self.trials <= 10_000:
            raise BadInput(f"--trials: expected 1 to 10000, got {self.trials}")
        if self.sampler not in SAMPLERS:
            raise BadInput(f"--sampler {self.sampler}: expected one of {', '.join(SAMPLERS)}")
        if self.patience is not None and self.patience < 1:
            raise BadInput(f"--patience: expected a positive number of trials, got {self.patience}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise BadInput(f"--timeout: expected a positive duration, got {self.timeout_s}")


def parse_duration(text: str) -> float:
    """'30m', '90s', '1h', '1h30m' or plain seconds -> seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    if not value or not parts or not any(parts.groups()):
        raise BadInput(f"--timeout {text}: expected a duration like 90s, 30m, 1h or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in parts.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


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


@dataclass(frozen=True)
class SearchJob:
    """What to search: the model, its space and constraints, and how every config is driven and measured."""

    model_repository: Path
    model: str
    base: ModelConfig
    space: Space
    constraints: Constraints
    load: LoadSpec | None  # None: --concurrency auto
    inputs: InputSource
    measure: MeasureSettings
    output: Path
    energy_meter: str = "auto"
    cpu_tdp_watts: float | None = None
    gpus: list[int] | None = None
    engine: str = "builtin"  # the load engine for --concurrency auto (otherwise load.engine)
    perf_analyzer: Path | None = None

    def load_description(self) -> dict[str, Any]:
        """How load is applied, for the study's settings and the report."""
        if self.load is None:
            return {"mode": "auto", "max_p99_ms": self.constraints.max_p99_ms, "engine": self.engine}
        return self.load.describe()

    def fingerprint(self) -> dict[str, Any]:
        """Settings that must not change when a study is resumed (else results would not compare)."""
        return {
            "model": self.model,
            "load": self.load_description(),
            "constraints": self.constraints.to_dict(),
            "space": self.space.source,
            "energy_meter": self.energy_meter,
            "energy_accounting": self.measure.energy_accounting,
            "window_s": self.measure.window_s,
        }


def make_sampler(name: str, seed: int, space: Space, trials: int) -> optuna.samplers.BaseSampler:
    """TPE (default), GP (needs the gp extra), grid or random; constraints come from trial.set_constraint."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)), multivariate=True)
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


def open_study(job: SearchJob, settings: SearchSettings) -> tuple[optuna.Study, str]:
    """Create the study (or load it with --resume); refuses to mix a new search into an old study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = settings.storage or f"sqlite:///{(job.output / 'study.db').resolve()}"
    name = study_name(job.model)
    sampler = make_sampler(settings.sampler, settings.seed, job.space, settings.trials)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as exc:  # sqlalchemy errors name the URL's problem
        raise BadInput(f"--storage {url}: cannot open ({str(exc).splitlines()[0]})") from None
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if name in existing and not settings.resume:
        raise BadInput(
            f"{url} already holds study {name!r}; pass --resume to continue it, or use another --output/--storage"
        )
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                load_if_exists=True)
    fingerprint = job.fingerprint()
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", fingerprint)
    elif recorded != fingerprint:
        changed = [k for k in fingerprint if recorded.get(k) != fingerprint[k]]
        raise BadInput(
            f"--resume: the study was run with different {', '.join(changed)} "
            f"({', '.join(f'{k}={recorded.get(k)}' for k in changed)}); results would not compare"
        )
    return study, url


def recorded_results(study: optuna.Study) -> tuple[list[TrialResult], int]:
    """Results saved in the study (measured trials only) and the count of reused duplicates."""
    results, duplicates = [], 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "duplicate_of" in trial.user_attrs:
            duplicates += 1
            continue
        if "result" in trial.user_attrs:
            results.append(TrialResult.from_dict(trial.user_attrs["result"]))
    return results, duplicates


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING by a killed run: mark them failed and queue their params again (retried on resume)."""
    storage = study._storage
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={k: v for k, v in trial.user_attrs.items() if k == "baseline"},
                            skip_if_exists=True)
        count += 1
    return count


class Search:
    """One search run: ask the sampler, dedupe, measure on the server, tell the study, persist every result."""

    def __init__(self, job: SearchJob, settings: SearchSettings, launcher: Any, progress: Progress | None = None,
                 on_result: Callable[[SearchOutcome], None] | None = None) -> None:
        self.job = job
        self.settings = settings
        self.launcher = launcher
        self.progress = progress
        self.on_result = on_result
        self.batches = job.base.max_batch_size > 0
        self.space = job.space.for_model(self.batches)

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(event, data)

    def run(self, after: Callable[[Server, SearchOutcome], None] | None = None) -> SearchOutcome:
        """Run until a budget is spent; `after(server, outcome)` runs on a live server (export) before it stops."""
        job, settings = self.job, self.settings
        job.output.mkdir(parents=True, exist_ok=True)
        study, url = open_study(job, settings)
        recovered = recover_interrupted(study)
        if recovered:
            self._emit("recovered", {"count": recovered})
        results, duplicates = recorded_results(study)
        if not study.trials:
            baseline = trial_of(job.base)
            study.enqueue_trial(self.space.params_of(baseline), user_attrs={"baseline": True})
        outcome = SearchOutcome(results=results, baseline=None, best=None, stop_reason="", storage_url=url,
                                study_name=study.study_name, duplicates=duplicates)
        by_key = {self._key(r.config): r for r in results}
        started = time.monotonic()
        restarts = 0
        consecutive_duplicates = 0
        since_improvement = 0
        initial_best = best_trial(results)
        best_score = score(initial_best.measurement) if initial_best else None
        grid_size = len(self.space.grid_configs()) if settings.sampler == "grid" else None
        sampler = study.sampler
        while True:
            try:
                with self._server() as server:
                    meters = select_meters(server, job.energy_meter, job.cpu_tdp_watts, job.gpus)
                    outcome.meter_details = {m.name: _meter_details(m) for m in meters}
                    self._measure_idle(server, meters, outcome)
                    if not outcome.environment:
                        from tuner.provenance import environment
                        from tuner.server import control

                        outcome.environment = environment(control.server_version(server),
                                                          server.details.get("source", server.kind))
                    while True:
                        reason = self._stop_reason(outcome, started, since_improvement, consecutive_duplicates,
                                                   grid_size)
                        if not reason and isinstance(sampler, optuna.samplers.GridSampler) and \
                                sampler.is_exhausted(study) and not _waiting(study):
                            reason = f"grid exhausted ({len(outcome.results)} distinct configs measured)"
                        if reason:
                            outcome.stop_reason = reason
                            break
                        trial = study.ask()
                        try:
                            result, duplicate_of = self._run_trial(trial, server, meters, by_key, outcome)
                            self._record(study, trial, result, duplicate_of)
                        except BaseException:
                            # Ctrl-C or a storage error mid-trial: leave nothing RUNNING, retry it on --resume.
                            with contextlib.suppress(Exception):
                                study.tell(trial, state=TrialState.FAIL)
                                study.enqueue_trial(trial.params, user_attrs=dict(trial.user_attrs),
                                                    skip_if_exists=True)
                            raise
                        if duplicate_of is not None:
                            outcome.duplicates += 1
                            consecutive_duplicates += 1
                            continue
                        consecutive_duplicates = 0
                        outcome.results.append(result)
                        by_key[self._key(result.config)] = result
                        current = best_trial(outcome.results)
                        current_score = score(current.measurement) if current else None
                        if current_score is not None and (best_score is None or current_score > best_score):
                            best_score, since_improvement = current_score, 0
                        else:
                            since_improvement += 1
                        self._finish(outcome)
                        self._emit("trial_end", {"result": result, "best": outcome.best,
                                                 "measured": len(outcome.results), "total": settings.trials})
                        if self.on_result is not None:
                            self.on_result(outcome)
                        if result.failed and not server.is_alive():
                            raise _Restart()
                    if settings.repeats > 1:
                        self._repeat_top(server, meters, outcome)
                    self._finish(outcome)
                    if after is not None:
                        after(server, outcome)
                    return outcome
            except _Restart:
                restarts += 1
                outcome.server_restarts = restarts
                if restarts > MAX_SERVER_RESTARTS:
                    raise ServerError(f"tritonserver died {restarts} times; stopping (see tritonserver.log)") from None
                self._emit("server_restart", {"count": restarts})

    def _idle_w(self, outcome: SearchOutcome) -> float | None:
        return sum(outcome.idle_power_w.values()) if outcome.idle_power_w else None

    def _measure_idle(self, server: Server, meters: list[Any], outcome: SearchOutcome) -> None:
        """Idle power with the model's own config loaded and no load (once per server start)."""
        if self.job.measure.idle_s <= 0 or not any(m.measures_energy for m in meters):
            return
        self._emit("idle", {"seconds": self.job.measure.idle_s})
        try:
            load_trial(server, self.job.model, self.job.base, trial_of(self.job.base), self.job.inputs)
        except ModelLoadError as exc:
            raise ModelLoadError(f"the model's own config does not load, so there is no baseline: {exc}") from None
        outcome.idle_power_w = measure_idle(server, meters, self.job.measure.idle_s)

    def _repeat_top(self, server: Server, meters: list[Any], outcome: SearchOutcome) -> None:
        """--repeats N: measure the top-k feasible configs until each has N measurements; pool their windows."""
        job = self.job
        ranked = sorted((r for r in outcome.results if r.feasible), key=lambda r: -score(r.measurement))
        for result in ranked[: self.settings.top_k]:
            assert result.measurement is not None
            runs = [result.measurement]
            for _ in range(self.settings.repeats - result.measurement.repeats):
                self._emit("repeat", {"number": result.number, "config": result.config.describe()})
                try:
                    runs.append(measure_trial(server, job.model, job.base, result.config, job.load or LoadSpec(
                        concurrency=result.measurement.load.get("concurrency", 1), engine=job.engine,
                        perf_analyzer=job.perf_analyzer), job.inputs, meters, job.measure,
                        self.progress, self._idle_w(outcome)))
                except (ModelLoadError, LoadGenerationError, ServerError) as exc:
                    self._emit("repeat_failed", {"number": result.number, "reason": str(exc).splitlines()[0]})
                    break
            pooled = pool_measurements(runs, job.measure)
            index = outcome.results.index(result)
            updated = TrialResult(result.number, result.config, pooled, result.failure_reason,
                                  violations(pooled, job.constraints))
            outcome.results[index] = updated
            outcome.repeated.append(result.number)
            write_json(job.output / "trials" / f"trial-{result.number:04d}.json", {"trial": updated.to_dict()})

    @contextlib.contextmanager
    def _server(self) -> Iterator[Server]:
        with self.launcher.start(self.job.model_repository, self.job.output) as server:
            yield server

    def _key(self, config: TrialConfig) -> str:
        """The effective config's identity: two knob sets that render the same model config are one config."""
        return trial_of(apply_trial(self.job.base, config)).key()

    def _stop_reason(self, outcome: SearchOutcome, started: float, since_improvement: int,
                     consecutive_duplicates: int, grid_size: int | None) -> str:
        settings = self.settings
        if len(outcome.results) >= settings.trials:
            return f"trial budget reached ({settings.trials} configs measured)"
        if grid_size is not None and len(outcome.results) >= grid_size:
            return f"grid exhausted ({grid_size} distinct configs)"
        if settings.timeout_s is not None and time.monotonic() - started >= settings.timeout_s:
            return f"timeout ({settings.timeout_s:.0f} s)"
        if settings.patience is not None and since_improvement >= settings.patience:
            return f"no improvement in {settings.patience} trials (--patience)"
        if consecutive_duplicates >= MAX_CONSECUTIVE_DUPLICATES:
            return f"space exhausted: the sampler proposed {consecutive_duplicates} measured configs in a row"
        return ""

    def _run_trial(self, trial: optuna.Trial, server: Server, meters: list[Any],
                   by_key: dict[str, TrialResult], outcome: SearchOutcome) -> tuple[TrialResult, int | None]:
        job = self.job
        is_baseline = bool(trial.user_attrs.get("baseline"))
        sampled = self.space.sample(trial)
        config = trial_of(job.base) if is_baseline else sampled
        try:
            key = self._key(config)
        except BadInput as exc:
            return TrialResult(trial.number, config, None, failure_reason=f"invalid config: {exc}",
                               violations=violations(None, job.constraints)), None
        earlier = by_key.get(key)
        if earlier is not None:
            return TrialResult(trial.number, config, earlier.measurement, earlier.failure_reason,
                               dict(earlier.violations)), earlier.number
        self._emit("trial_start", {"number": trial.number, "config": config.describe(), "baseline": is_baseline})
        measurement, reason = None, None
        try:
            if job.load is None:
                assert job.constraints.max_p99_ms is not None
                measurement = measure_auto_concurrency(server, job.model, job.base, config, job.constraints.max_p99_ms,
                                                       job.inputs, meters, job.measure, progress=self.progress,
                                                       idle_power_w=self._idle_w(outcome), engine=job.engine,
                                                       perf_analyzer=job.perf_analyzer)
            else:
                measurement = measure_trial(server, job.model, job.base, config, job.load, job.inputs, meters,
                                            job.measure, self.progress, self._idle_w(outcome))
        except ServerDied as exc:
            reason = f"server died: {str(exc).splitlines()[0]}"
        except (ModelLoadError, LoadGenerationError) as exc:
            reason = str(exc)
        except MeterUnavailable as exc:
            reason = f"meter failed: {exc}"
        except ServerError as exc:
            if not server.is_alive():
                reason = f"server died: {str(exc).splitlines()[0]}"
            else:
                reason = str(exc)
        return TrialResult(trial.number, config, measurement, reason,
                           violations(measurement if reason is None else None, job.constraints)), None

    def _record(self, study: optuna.Study, trial: optuna.Trial, result: TrialResult, duplicate_of: int | None) -> None:
        """Persist the result (JSON record, then the study) before the next trial starts."""
        try:
            if duplicate_of is None:
                write_json(self.job.output / "trials" / f"trial-{trial.number:04d}.json", {"trial": result.to_dict()})
                trial.set_user_attr("result", result.to_dict())
            else:
                trial.set_user_attr("duplicate_of", duplicate_of)
            trial.set_user_attr("config_key", json.loads(result.config.key()))
            for name, value in result.violations.items():
                trial.set_constraint(name, value)
            study.tell(trial, score(result.measurement) if not result.failed else 0.0)
        except OSError as exc:
            raise StorageError(f"cannot save trial {trial.number}: {exc.filename or ''} {exc.strerror}; search stopped") from None
        except GreentuneError:
            raise
        except Exception as exc:  # the storage backend's own errors (sqlalchemy, disk full)
            raise StorageError(f"cannot save trial {trial.number} to the study: {str(exc).splitlines()[0]}; "
                               "search stopped") from None

    def _finish(self, outcome: SearchOutcome) -> None:
        outcome.best = best_trial(outcome.results)
        baselines = [r for r in outcome.results if r.config == trial_of(self.job.base)]
        outcome.baseline = min(baselines, key=lambda r: r.number) if baselines else None


def _waiting(study: optuna.Study) -> bool:
    """True when trials are queued (an interrupted trial to retry, or the baseline)."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


class _Restart(Exception):
    """The server died during a trial: restart it and go on."""


def _meter_details(meter: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": meter.name}
    for attr in ("tdp_w", "tdp_basis", "logical_cores", "idle_fraction", "cpu_model"):
        if hasattr(meter, attr):
            details[attr] = getattr(meter, attr)
    return details
