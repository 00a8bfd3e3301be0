"""The bench: one live Triton server with its meters, idle power, request inputs and load policy.

search, measure and export all go through it: `with Bench(...) as bench: bench.measure(config, number)`.
A server that dies is the bench's concern: the trial it killed comes back as a failed TrialResult, and the
next measurement starts a fresh server.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tuner.engines import resolve_engine
from tuner.errors import (
    BadInput,
    LoadGenerationError,
    LoadToolError,
    MeterUnavailable,
    ModelLoadError,
    ServerDied,
    ServerError,
)
from tuner.events import IdleMeasuring, Progress, ServerRestarted, emit
from tuner.load import LoadSpec
from tuner.measure import (
    InputSource,
    MeasureContext,
    MeasureSettings,
    load_trial,
    measure_auto_concurrency,
    measure_idle,
    measure_loaded,
    measure_trial,
)
from tuner.meters.base import Meter
from tuner.meters.select import MeterChoice
from tuner.model_config import ModelConfig, apply_trial, read_model_config, trial_of, write_model_config
from tuner.objective import Constraints, violations
from tuner.provenance import environment
from tuner.results import Measurement, SetConfig, TrialConfig, TrialResult
from tuner.screening import Screen
from tuner.server import control
from tuner.server.base import Server, ServerLauncher

MAX_SERVER_RESTARTS = 3


@dataclass(frozen=True)
class LoadPolicy:
    """How every config is driven: the fixed load in `spec`, or auto: the highest concurrency whose p99 stays
    within auto_max_p99_ms. The spec always carries the request timeout; under auto it is the template of
    every probe and measurement."""

    spec: LoadSpec
    auto_max_p99_ms: float | None = None

    @classmethod
    def auto(cls, max_p99_ms: float, template: LoadSpec) -> LoadPolicy:
        """--concurrency auto under --max-p99-ms; `template` carries --request-timeout and the engine."""
        return cls(template, max_p99_ms)

    @classmethod
    def from_flags(cls, concurrency: str | None, request_rate: float | None, request_timeout: float,
                   allow_auto: bool = False, max_p99_ms: float | None = None, load_generator: str = "builtin",
                   perf_analyzer: Path | None = None) -> LoadPolicy:
        """The policy from --concurrency N|auto, --request-rate, --request-timeout, --load-generator and
        --perf-analyzer: closed loop at concurrency 8 unless told otherwise, or auto under max_p99_ms (search only).
        The load generator is resolved here (auto: perf_analyzer where found, else builtin) and kept in the spec."""
        engine = resolve_engine(load_generator, perf_analyzer)
        if concurrency == "auto":
            if not allow_auto:
                raise BadInput("--concurrency auto is only for search; give a number of concurrent requests")
            if request_rate is not None:
                raise BadInput("give either --concurrency auto or --request-rate, not both")
            if max_p99_ms is None:
                raise BadInput("--concurrency auto needs --max-p99-ms (the latency each config is driven up to)")
            return cls.auto(max_p99_ms, LoadSpec(concurrency=1, request_timeout_s=request_timeout, engine=engine,
                                                 perf_analyzer=perf_analyzer))
        count: int | None = None
        if concurrency is not None:
            try:
                count = int(concurrency)
            except ValueError:
                raise BadInput(f"--concurrency {concurrency}: expected a positive integer or auto") from None
        elif request_rate is None:
            count = 8
        return cls(LoadSpec(concurrency=count, request_rate_per_s=request_rate, request_timeout_s=request_timeout,
                            engine=engine, perf_analyzer=perf_analyzer))

    def describe(self) -> dict[str, Any]:
        """How load is applied, for the study's settings and the report."""
        if self.auto_max_p99_ms is not None:
            return {"mode": "auto", "max_p99_ms": self.auto_max_p99_ms, "engine": self.spec.engine}
        return self.spec.describe()


class TrialBench(Protocol):
    """What the search loop needs from a bench (the real Bench, or a fake in tests)."""

    server_restarts: int
    idle_power_w: dict[str, float]
    environment: dict[str, Any]
    meter_details: dict[str, Any]

    def measure(self, config: TrialConfig | SetConfig, number: int, screen: Screen | None = None) -> TrialResult:
        """Measure a config under the load policy, stopping early where `screen` (called after every window) gives a
        reason; failures come back as a failed TrialResult (failure_kind "tool" when the load tool failed)."""
        ...

    def remeasure(self, result: TrialResult) -> TrialResult:
        """Measure a measured config again at the load it was measured at (for --repeats)."""
        ...


class Bench:
    """One live server (restarted when it dies), its meters, idle power, inputs, load policy and progress callback."""

    def __init__(
        self,
        launcher: ServerLauncher,
        model_repository: Path,
        model: str,
        base: ModelConfig,
        output: Path,
        inputs: InputSource,
        load: LoadPolicy | None = None,
        settings: MeasureSettings | None = None,
        constraints: Constraints | None = None,
        meters: MeterChoice | None = None,
        progress: Progress | None = None,
        idle_config: TrialConfig | None = None,
    ) -> None:
        self.launcher = launcher
        self.model_repository = Path(model_repository)
        self.model = model
        self.base = base
        self.output = Path(output)
        self.inputs = inputs
        self.load = load or LoadPolicy(LoadSpec())
        self.settings = settings or MeasureSettings(idle_s=0)
        self.constraints = constraints or Constraints()
        self.meter_choice = meters  # None: no meters (export only loads and smoke-tests)
        self.progress = progress
        self.idle_config = idle_config  # loaded while idle power is measured (default: the model's own config)
        self.server_restarts = 0
        self.idle_power_w: dict[str, float] = {}
        self.environment: dict[str, Any] = {}
        self.meter_details: dict[str, Any] = {}
        self.meters: list[Meter] = []
        self._server_stack = contextlib.ExitStack()
        # Set before the server stops: a --parallel slot still measuring must not start another one behind it.
        self.closing = False
        self._restart_lock = threading.Lock()  # a restart in a slot's thread and the close never interleave
        self._context: MeasureContext | None = None
        self._preloaded: tuple[str, list[Any]] | None = None  # the idle config, still loaded, and its inputs

    def __enter__(self) -> Bench:
        try:
            self._start()
        except BaseException:
            self._server_stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closing = True
        with self._restart_lock:
            self._server_stack.close()

    @property
    def server(self) -> Server:
        """The live server."""
        return self._ctx().server

    def _ctx(self) -> MeasureContext:
        if self._context is None:
            raise RuntimeError("the bench is not started: use `with Bench(...) as bench:`")
        return self._context

    def _start(self) -> None:
        """Start a server, pick its meters, measure idle power, record where it runs."""
        server = self._server_stack.enter_context(self.launcher.start(self.model_repository, self.output))
        self.meters = self.meter_choice.select(server) if self.meter_choice is not None else []
        for meter in self.meters:
            self._server_stack.callback(meter.close)
        self.meter_details = {m.name: _meter_details(m) for m in self.meters}
        context = MeasureContext(server, self.model, self.base, self.inputs, self.meters, self.settings,
                                 self.progress)
        self.idle_power_w = self._measure_idle(context)
        self._context = replace(context, idle_power_w=sum(self.idle_power_w.values()) if self.idle_power_w else None)
        if not self.environment:
            self.environment = environment(control.server_version(server), server.details.get("source", server.kind))

    def _measure_idle(self, context: MeasureContext) -> dict[str, float]:
        """Idle power per domain with the idle config loaded and no load (once per server start)."""
        if self.settings.idle_s <= 0 or not any(m.measures_energy for m in self.meters):
            return {}
        config = self.idle_config or trial_of(self.base)
        try:
            samples = load_trial(context, config)
        except ModelLoadError as exc:
            if self.idle_config is not None:
                raise
            raise ModelLoadError(f"the model's own config does not load, so there is no baseline: {exc}") from None
        emit(self.progress, IdleMeasuring(self.settings.idle_s))
        idle = measure_idle(context.server, self.meters, self.settings.idle_s)
        self._preloaded = (config.key(), samples)
        return idle

    def _ensure_alive(self) -> None:
        """Start a fresh server when the last one died (at most MAX_SERVER_RESTARTS times); never once the bench is
        closing (Ctrl-C, or another --parallel slot failed), which raises instead."""
        if self.closing:
            raise ServerError("the bench is closing (interrupted, or another slot failed): no further measurement")
        if self._ctx().server.is_alive():
            return
        with self._restart_lock:
            if self.closing:
                raise ServerError("tritonserver stopped while the bench is closing; not restarted")
            self._server_stack.close()
            self._context, self._preloaded = None, None
            self.server_restarts += 1
            if self.server_restarts > MAX_SERVER_RESTARTS:
                raise ServerError(f"tritonserver died {self.server_restarts} times; stopping (see tritonserver.log)")
            emit(self.progress, ServerRestarted(self.server_restarts))
            self._start()

    def measure(self, config: TrialConfig | SetConfig, number: int, screen: Screen | None = None) -> TrialResult:
        """Measure a config under the load policy; a refused config, failed requests or a dead server fail the trial
        (the config's failure), a failing load tool too (the tool's). `screen` is called after every window with the
        windows so far; a reason from it stops the measurement, which then holds those windows, marked screened."""
        return self._trial(config, number, None, screen)

    def remeasure(self, result: TrialResult) -> TrialResult:
        """Measure a measured config again at the concurrency it was measured at (auto does not probe again)."""
        concurrency = result.measurement.load.get("concurrency") if result.measurement is not None else None
        return self._trial(result.config, result.number, concurrency)

    def _trial(self, config: TrialConfig | SetConfig, number: int, concurrency: int | None,
               screen: Screen | None = None) -> TrialResult:
        self._ensure_alive()
        measurement, reason, kind = None, None, "config"
        try:
            measurement = self._measure(config, concurrency, screen)
        except ServerDied as exc:
            reason = f"server died: {str(exc).splitlines()[0]}"
        except LoadToolError as exc:
            reason, kind = f"load tool failed: {exc}", "tool"
        except (ModelLoadError, LoadGenerationError) as exc:
            reason = str(exc)
        except MeterUnavailable as exc:
            reason = f"meter failed: {exc}"
        except ServerError as exc:
            reason = f"server died: {str(exc).splitlines()[0]}" if not self.server.is_alive() else str(exc)
        return TrialResult(number, config, measurement, reason,
                           self.violations(measurement if reason is None else None),
                           failure_kind=kind if reason is not None else None)

    def violations(self, measurement: Measurement | None) -> dict[str, float]:
        """How far a measurement breaks the limits (None: failed)."""
        return violations(measurement, self.constraints)

    def _measure(self, config: TrialConfig | SetConfig, concurrency: int | None,
                 screen: Screen | None = None) -> Measurement:
        assert isinstance(config, TrialConfig)
        context, load = self._ctx(), self.load
        preloaded, self._preloaded = self._preloaded, None
        if load.auto_max_p99_ms is not None and concurrency is None:
            return measure_auto_concurrency(context, config, load.spec, load.auto_max_p99_ms, screen=screen)
        spec = load.spec if concurrency is None or load.auto_max_p99_ms is None else replace(
            load.spec, concurrency=concurrency, request_rate_per_s=None)
        if preloaded is not None and preloaded[0] == config.key():
            return measure_loaded(context, config, spec, preloaded[1], screen)
        return measure_trial(context, config, spec, screen)

    def measure_config(self, config: ModelConfig) -> Measurement:
        """Load a whole model config (compare: a candidate may change more than the knobs) and measure it under the
        load policy's fixed load; raises what a measurement raises (ModelLoadError, ServerDied, LoadGenerationError,
        LoadToolError)."""
        self._ensure_alive()
        self._preloaded = None
        return measure_trial(replace(self._ctx(), base=config), trial_of(config), self.load.spec)

    def export(self, config: TrialConfig, path: Path) -> Path:
        """Load the config, answer one smoke inference, then write it to path atomically and read it back."""
        self._ensure_alive()
        self._preloaded = None
        return self._export_on(self._ctx(), config, path)

    @staticmethod
    def _export_on(context: MeasureContext, config: TrialConfig, path: Path) -> Path:
        """Export `config` of the context's model (one model of a set, in SetBench)."""
        rendered = apply_trial(context.base, config)
        samples = load_trial(context, config)
        control.smoke_infer(context.server, context.model, samples[0])
        write_model_config(rendered, path)
        if read_model_config(path) != rendered:  # pragma: no cover - would mean a broken filesystem
            raise OSError(f"{path}: written config does not read back equal")
        return path


def _meter_details(meter: Meter) -> dict[str, Any]:
    details: dict[str, Any] = {"name": meter.name}
    for attr in ("tdp_w", "tdp_basis", "logical_cores", "idle_fraction", "cpu_model"):
        if hasattr(meter, attr):
            details[attr] = getattr(meter, attr)
    return details
