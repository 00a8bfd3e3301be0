"""One trial: load the config into the server, warm up, run windows under the meters, return a Measurement."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuner.engines import RequestRecords, bin_window, run_engine
from tuner.engines.records import covered_windows
from tuner.errors import BadInput, LoadGenerationError, LoadToolError, ServerDied
from tuner.events import ConcurrencyProbed, EngineStarted, ModelLoading, Progress, WarmingUp, WindowMeasured, emit
from tuner.inputs import Sample, input_specs, load_input_data, synthetic_samples
from tuner.load import LoadSpec, WindowStats, is_stable
from tuner.meters.base import SOURCE_UNAVAILABLE, Meter, Reading
from tuner.model_config import ModelConfig, apply_trial
from tuner.objective import REQUEST_RATE_TOLERANCE
from tuner.results import Measurement, SetConfig, Spread, TrialConfig, Window
from tuner.screening import Screen, ScreenWindow
from tuner.server import control
from tuner.server.base import Server
from tuner.server.metrics import inference_count

COUNT_TOLERANCE = 0.02  # a window whose count differs from Triton's by more is flagged
STUB_EXIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MeasureSettings:
    """How a trial is measured: warm-up, window length, stability rule, failure tolerance."""

    warmup_s: float = 2.0
    window_s: float | None = None  # None: the meters' preferred window (2 s; 5 s with NVML)
    max_windows: int = 10
    stable_windows: int = 3
    stability_tolerance: float = 0.10
    max_failure_rate: float = 0.05
    idle_s: float = 3.0
    energy_accounting: str = "total"

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> MeasureSettings:
        """The settings from --warmup, --window, --max-windows, --stability, --idle-seconds, --energy-accounting and
        --max-failure-rate."""
        return cls(warmup_s=flags["warmup"], window_s=flags["window"], max_windows=flags["max_windows"],
                   stability_tolerance=flags["stability"], idle_s=flags["idle_seconds"],
                   energy_accounting=flags["energy_accounting"], max_failure_rate=flags["max_failure_rate"])

    def __post_init__(self) -> None:
        if self.energy_accounting not in ("total", "dynamic"):
            raise BadInput(f"--energy-accounting {self.energy_accounting}: expected total or dynamic")
        if self.idle_s < 0:
            raise BadInput(f"--idle-seconds: expected 0 or more seconds, got {self.idle_s}")
        if self.energy_accounting == "dynamic" and self.idle_s <= 0:
            raise BadInput("--energy-accounting dynamic needs an idle measurement: --idle-seconds above 0")
        if self.window_s is not None and not self.window_s > 0:
            raise BadInput(f"--window: expected positive seconds, got {self.window_s}")
        if self.warmup_s < 0:
            raise BadInput(f"--warmup: expected 0 or more seconds, got {self.warmup_s}")
        if not 1 <= self.stable_windows <= self.max_windows:
            raise BadInput(
                f"--max-windows: expected at least {self.stable_windows} (the stable-window count), got {self.max_windows}"
            )
        if not 0 <= self.max_failure_rate < 1:
            raise BadInput(f"--max-failure-rate: expected a fraction from 0 to below 1, got {self.max_failure_rate}")
        if not 0 < self.stability_tolerance < 1:
            raise BadInput(f"--stability: expected a fraction between 0 and 1, got {self.stability_tolerance}")


    def window_for(self, meters: Sequence[Meter]) -> float:
        """The window length: as asked (or the meters' preference), never below a meter's minimum."""
        window = self.window_s if self.window_s is not None else max(
            [2.0, *(getattr(m, "preferred_window_s", 2.0) for m in meters)])
        return max([window, *(getattr(m, "min_window_s", 0.0) for m in meters)])


@dataclass(frozen=True)
class InputSource:
    """Where request inputs come from: --shape overrides and an optional --input-data file."""

    shapes: dict[str, tuple[int, ...]]
    input_data: Path | None = None

    def samples(self, server: Server, model: str) -> list[Sample]:
        """Inputs for the loaded model, from its metadata (or the data file)."""
        metadata, config = control.model_metadata(server, model)
        specs = input_specs(metadata, config, self.shapes)
        if self.input_data is not None:
            return load_input_data(self.input_data, specs)
        return synthetic_samples(specs)


@dataclass(frozen=True)
class MeasureContext:
    """What every measurement on one live server shares (the bench builds it once per server start)."""

    server: Server
    model: str
    base: ModelConfig
    inputs: InputSource
    meters: Sequence[Meter]
    settings: MeasureSettings
    progress: Progress | None = None
    idle_power_w: float | None = None  # total idle W, subtracted under energy_accounting 'dynamic'


def measure_trial(ctx: MeasureContext, trial: TrialConfig, load: LoadSpec, screen: Screen | None = None) -> Measurement:
    """Load the trial's config, then measure it; raises ModelLoadError, ServerDied or LoadGenerationError."""
    samples = load_trial(ctx, trial)
    return measure_loaded(ctx, trial, load, samples, screen)


def measure_loaded(ctx: MeasureContext, trial: TrialConfig, load: LoadSpec, samples: list[Sample],
                   screen: Screen | None = None) -> Measurement:
    """Measure the config that is already loaded (warm-up, then windows until stable, or until `screen`, called after
    every window, gives a reason to stop: the Measurement then holds the windows so far and that reason)."""
    return asyncio.run(_measure(ctx, trial, load, samples, screen))


def measure_idle(server: Server, meters: Sequence[Meter], seconds: float) -> dict[str, float]:
    """Idle power (W) per energy domain: server up, model loaded, no load."""
    energy_meters = [m for m in meters if m.measures_energy]
    if not energy_meters or seconds <= 0:
        return {}
    for meter in energy_meters:
        meter.begin()
    time.sleep(seconds)
    readings = [meter.end() for meter in energy_meters]
    _check_alive(server)
    return {domain: joules / r.duration_s for r in readings for domain, joules in r.energy_j.items() if r.duration_s}


def load_trial(ctx: MeasureContext, trial: TrialConfig) -> list[Sample]:
    """Load the trial's config into the server and return request inputs for it."""
    config = apply_trial(ctx.base, trial)
    emit(ctx.progress, ModelLoading(trial.describe()))
    previous = control.backend_stub_pids(ctx.server, ctx.model)
    control.load_config(ctx.server, ctx.model, config)
    # The previous config's instances exit after load returns; their memory must not count as this config's.
    control.wait_for_previous_instances(ctx.server, ctx.model, previous, STUB_EXIT_TIMEOUT_S)
    return ctx.inputs.samples(ctx.server, ctx.model)


def measure_auto_concurrency(
    ctx: MeasureContext, trial: TrialConfig, load: LoadSpec, max_p99_ms: float, max_concurrency: int = 256,
    screen: Screen | None = None,
) -> Measurement:
    """Raise concurrency (1, 2, 4, ...) while p99 stays within max_p99_ms and throughput grows; measure there.

    `load` is the template every probe and the final measurement use (request timeout, engine); only its
    concurrency is chosen here.
    """
    server = ctx.server
    samples = load_trial(ctx, trial)
    chosen, best_throughput, concurrency = 1, 0.0, 1
    while concurrency <= max_concurrency:
        stats = asyncio.run(_probe(ctx, samples, _closed_loop(load, concurrency)))
        _check_alive(server)
        p99 = stats.percentile_ms(99)
        emit(ctx.progress, ConcurrencyProbed(concurrency, stats.throughput_per_s, p99))
        if not p99 <= max_p99_ms:
            break
        if stats.throughput_per_s < best_throughput * 1.03:
            break  # saturated: more clients only add queueing
        chosen, best_throughput = concurrency, stats.throughput_per_s
        concurrency *= 2
    measurement = asyncio.run(_measure(ctx, trial, _closed_loop(load, chosen), samples, screen))
    return replace(measurement, load={"mode": "auto", "concurrency": chosen, "max_p99_ms": max_p99_ms,
                                      "engine": load.engine})


def _closed_loop(load: LoadSpec, concurrency: int) -> LoadSpec:
    return replace(load, concurrency=concurrency, request_rate_per_s=None)


async def _probe(ctx: MeasureContext, samples: list[Sample], load: LoadSpec) -> WindowStats:
    server, model, settings = ctx.server, ctx.model, ctx.settings
    with run_engine(server.grpc_url, model, samples, load) as engine:
        await asyncio.sleep(min(settings.warmup_s, 0.5))
        start_ns = time.time_ns()
        await asyncio.sleep(settings.window_s or 2.0)
        end_ns = time.time_ns()
        records = RequestRecords.merge([engine.drain(), engine.stop()])
    return bin_window(records, start_ns, end_ns)


@dataclass(frozen=True)
class Drive:
    """One model driven during a measurement: its name, its load and its request inputs."""

    model: str
    load: LoadSpec
    samples: list[Sample]


def measure_set(ctx: MeasureContext, config: SetConfig, drives: list[Drive], screen: Screen | None = None) -> Measurement:
    """Measure a set of loaded models, each driven by its own engine at its own load over the same windows and meters:
    the set's Measurement (every inference over every joule) with each model's figures in `members`."""
    return asyncio.run(_measure_drives(ctx, config, drives, screen))


async def _measure(ctx: MeasureContext, trial: TrialConfig, load: LoadSpec, samples: list[Sample],
                   screen: Screen | None = None) -> Measurement:
    return await _measure_drives(ctx, trial, [Drive(ctx.model, load, samples)], screen)


async def _measure_drives(ctx: MeasureContext, trial: TrialConfig | SetConfig, drives: list[Drive],
                          screen: Screen | None = None) -> Measurement:
    """Warm-up, then wall-clock windows under the meters; requests are binned into them by completion time.

    `screen` sees every window as it ends; a reason from it stops the load early (unless that window made the
    measurement stable, or was the last), and the windows so far are summarized, marked screened with the reason.
    Several drives (a set of models) run at once, one engine each; a window's figures are then the set's."""
    server, meters, settings, progress = ctx.server, ctx.meters, ctx.settings, ctx.progress
    windows: list[tuple[WindowStats, list[Reading]]] = []
    seen: list[ScreenWindow] = []
    screened: str | None = None
    spans: list[tuple[int, int]] = []
    triton_counts: list[list[float | None]] = [[] for _ in drives]
    counted: list[float | None] = []  # Triton's count per window over all drives (None where one was unreadable)
    parts: list[list[RequestRecords]] = [[] for _ in drives]
    window_s = settings.window_for(meters)
    # The engine's longest run: it sizes what the engine records (perf_analyzer's export).
    drives = [replace(d, load=replace(d.load, run_s=d.load.run_s or settings.warmup_s + settings.max_windows * window_s))
              for d in drives]
    models = [d.model for d in drives]
    with contextlib.ExitStack() as stack:
        engines = [stack.enter_context(run_engine(server.grpc_url, d.model, d.samples, d.load)) for d in drives]
        for name in dict.fromkeys(e.name for e in engines):
            emit(progress, EngineStarted(name))
        live = all(e.live for e in engines)
        if settings.warmup_s > 0:
            emit(progress, WarmingUp(settings.warmup_s))
            await asyncio.sleep(settings.warmup_s)
            for engine in engines:
                engine.drain()
            _check_alive(server)
        for index in range(settings.max_windows):
            for meter in meters:
                meter.begin()
            try:
                # The window's stamps sit at the middle of Triton's count reads, inside the meters' span.
                start_ns, counts_before = _stamped_counts(server, models)
                await asyncio.sleep(window_s)
                end_ns, counts_after = _stamped_counts(server, models)
            finally:
                readings = [meter.end() for meter in meters]
            _check_alive(server)
            spans.append((start_ns, end_ns))
            for part, engine, counts, before, after in zip(parts, engines, triton_counts, counts_before, counts_after,
                                                          strict=True):
                part.append(engine.drain())
                counts.append(after - before if before is not None and after is not None else None)
            if live:  # records of this window may sit in this drain and the one before
                stats = combine_stats([bin_window(RequestRecords.merge(part[-2:]), start_ns, end_ns) for part in parts])
            else:  # records come at the end: Triton's count meanwhile (p99 unknown until then)
                stats = WindowStats(duration_s=(end_ns - start_ns) / 1e9)
            windows.append((stats, readings))
            window_counts = [counts[-1] for counts in triton_counts]
            counted.append(None if None in window_counts else sum(c for c in window_counts if c is not None))
            throughput = stats.throughput_per_s if live else (counted[-1] or 0.0) / stats.duration_s
            emit(progress, WindowMeasured(index + 1, settings.max_windows, throughput, stats.percentile_ms(99)))
            throughputs = [w.throughput_per_s for w, _ in windows] if live else [
                (c or 0.0) / w.duration_s for c, (w, _) in zip(counted, windows, strict=True)]
            p99s = [w.percentile_ms(99) for w, _ in windows] if live else [1.0] * len(windows)
            reason = None
            if screen is not None:
                seen.append(_screen_window(index + 1, stats, readings, stats.success_count if live else counted[-1],
                                           live, drives[0].load if len(drives) == 1 else None, ctx))
                reason = screen(tuple(seen))
            if is_stable(throughputs, p99s, settings.stability_tolerance, settings.stable_windows):
                break
            if reason is not None and index + 1 < settings.max_windows:
                screened = f"after {index + 1} window{'s' if index else ''}: {reason}"
                break
        for part, engine in zip(parts, engines, strict=True):
            part.append(engine.stop())
    for meter in meters:
        meter.close()
    measurement = _summarize_drives(ctx, trial, drives, parts, spans, [r for _, r in windows], triton_counts,
                                    engines[0].name)
    return replace(measurement, screened_reason=screened)


def _summarize_drives(ctx: MeasureContext, trial: TrialConfig | SetConfig, drives: list[Drive],
                      parts: list[list[RequestRecords]], spans: list[tuple[int, int]], readings_of: list[list[Reading]],
                      triton_counts: list[list[float | None]], engine: str) -> Measurement:
    """Every drive's records binned into the windows (by completion time), summarized, with the count checks."""
    settings = ctx.settings
    records = [RequestRecords.merge(part) for part in parts]
    # Records cut short (a damaged export) keep the windows they cover; too few left is the load tool's failure.
    covered = [covered_windows(r, spans, settings.stable_windows) for r in records]
    kept = min(k for k, _ in covered)
    spans, readings_of = spans[:kept], readings_of[:kept]
    per_drive = [[bin_window(r, start, end) for start, end in spans] for r in records]
    if len(drives) == 1:
        measurement = summarize(trial, drives[0].load, list(zip(per_drive[0], readings_of, strict=True)), settings,
                                ctx.idle_power_w)
    else:
        assert isinstance(trial, SetConfig)
        measurement = _summarize_set(trial, drives, per_drive, readings_of, settings, ctx.idle_power_w)
    used = len(measurement.windows)
    checks = [w for drive, stats_of, counts in zip(drives, per_drive, triton_counts, strict=True)
              for w in count_warnings(stats_of[-used:], counts[:kept][-used:], engine,
                                      drive.model if len(drives) > 1 else None)]
    checks += [d for _, d in covered if d]
    return replace(measurement, warnings=measurement.warnings + tuple(checks))


def _summarize_set(config: SetConfig, drives: list[Drive], per_drive: list[list[WindowStats]],
                   readings_of: list[list[Reading]], settings: MeasureSettings,
                   idle_power_w: float | None) -> Measurement:
    """The set's Measurement (every model's requests over the server's joules) with each model's own figures (its
    requests, no energy) in `members`; a model whose requests failed is named in the error."""
    members: dict[str, Measurement] = {}
    for drive, stats_of in zip(drives, per_drive, strict=True):
        try:
            members[drive.model] = summarize(config.of(drive.model), drive.load,
                                             [(stats, []) for stats in stats_of], settings)
        except LoadGenerationError as exc:  # the same kind (LoadToolError stays the tool's failure), the model named
            raise type(exc)(f"{drive.model}: {exc}") from None
    combined = [combine_stats(list(window)) for window in zip(*per_drive, strict=True)]
    # Each model's rate was checked on its own above; the set's load is then described, not checked again.
    total = summarize(config, LoadSpec(concurrency=1, engine=drives[0].load.engine),
                      list(zip(combined, readings_of, strict=True)), settings, idle_power_w)
    load = {"mode": "set", "members": {d.model: d.load.describe() for d in drives}}
    return replace(total, load=load, members=members)


def combine_stats(stats: list[WindowStats]) -> WindowStats:
    """Several models' figures over one window as the set's: every request's latency, failures and sends."""
    if len(stats) == 1:
        return stats[0]
    sent = [s.sent_count for s in stats]
    return WindowStats(duration_s=stats[0].duration_s, latencies_ms=[v for s in stats for v in s.latencies_ms],
                       failure_count=sum(s.failure_count for s in stats), errors=[e for s in stats for e in s.errors],
                       sent_count=None if any(c is None for c in sent) else sum(c for c in sent if c is not None))


def _screen_window(index: int, stats: WindowStats, readings: list[Reading], inferences: float | None, live: bool,
                   load: LoadSpec | None, ctx: MeasureContext) -> ScreenWindow:
    """What a window showed as it ended: inferences (Triton's count where the engine reports at exit), joules as
    accounted, memory (GPU memory where metered), p99 where the engine reports live."""
    energies = [sum(r.energy_j.values()) for r in readings if r.energy_j]
    energy = sum(energies) if energies else None
    if energy is not None and ctx.settings.energy_accounting == "dynamic" and ctx.idle_power_w is not None:
        energy = max(energy - ctx.idle_power_w * stats.duration_s, 0.01 * energy)  # as summarize() accounts it
    gpu = [r.memory_mb for r in readings if r.memory_mb is not None and r.details.get("memory_kind") == "gpu"]
    memory = gpu or [r.memory_mb for r in readings if r.memory_mb is not None]
    p99 = stats.percentile_ms(99) if live else None
    return ScreenWindow(index=index, duration_s=stats.duration_s, inferences=inferences,
                        energy_j=energy, memory_mb=max(memory) if memory else None,
                        p99_ms=p99 if p99 is None or p99 == p99 else None,
                        concurrency=load.concurrency if load is not None else None)


def _stamped_counts(server: Server, models: list[str]) -> tuple[int, list[float | None]]:
    """Triton's inference count of each model and the wall-clock ns (time.time_ns()) they stand for."""
    before = time.time_ns()
    counts = [inference_count(server.metrics_url, model) for model in models]
    return (before + time.time_ns()) // 2, counts


def count_warnings(windows: list[WindowStats], triton_counts: list[float | None], engine: str,
                   model: str | None = None) -> list[str]:
    """A warning per window whose successful requests differ from Triton's nv_inference_count by more than 2% (in a
    set, each model's requests against its own count, the model named)."""
    warnings = []
    engine = f"{engine} ({model})" if model else engine
    for index, (stats, triton) in enumerate(zip(windows, triton_counts, strict=True)):
        if triton is None:
            continue
        counted = stats.success_count
        if abs(counted - triton) > COUNT_TOLERANCE * max(counted, triton, 1):
            warnings.append(f"window {index + 1}: {engine} counted {counted} inferences, Triton's nv_inference_count "
                            f"{triton:.0f} ({abs(counted - triton) / max(counted, triton):.1%} apart, over "
                            f"{COUNT_TOLERANCE:.0%})")
    return warnings


def _check_alive(server: Server) -> None:
    if not server.is_alive():
        raise ServerDied(f"tritonserver died during measurement; last log lines:\n{server.log_tail()}")


def summarize(
    trial: TrialConfig | SetConfig, load: LoadSpec, windows: list[tuple[WindowStats, list[Reading]]], settings: MeasureSettings,
    idle_power_w: float | None = None,
) -> Measurement:
    """Aggregate the final windows into a Measurement; too many failed requests raise LoadGenerationError.

    With energy_accounting 'dynamic', idle power x window time is subtracted from each window's joules.
    """
    throughputs = [w.throughput_per_s for w, _ in windows]
    p99s = [w.percentile_ms(99) for w, _ in windows]
    stable = is_stable(throughputs, p99s, settings.stability_tolerance, settings.stable_windows)
    used = windows[-settings.stable_windows:]
    latencies = [lat for w, _ in used for lat in w.latencies_ms]
    successes = sum(w.success_count for w, _ in used)
    failures = sum(w.failure_count for w, _ in used)
    errors = tuple(dict.fromkeys(e for w, _ in used for e in w.errors))[:5]
    total = successes + failures
    if total == 0:
        raise LoadGenerationError("no request completed during measurement (raise --request-timeout or --window?)")
    if failures / total > settings.max_failure_rate:
        raise LoadGenerationError(
            f"{failures} of {total} requests failed ({failures / total:.0%} > {settings.max_failure_rate:.0%} allowed): "
            + (errors[0] if errors else "no error message")
        )
    shortfall = check_request_rate(load, [w for w, _ in used])
    per_window: list[Window] = []
    energies: list[float | None] = []
    sources: list[str] = []
    domains: dict[str, float] = {}
    memory_source = SOURCE_UNAVAILABLE
    warnings: list[str] = [shortfall] if shortfall else []
    totals: list[float | None] = []
    energy_details: dict[str, Any] = {}
    triton_j: list[float] = []
    dynamic = settings.energy_accounting == "dynamic" and idle_power_w is not None
    for stats, readings in used:
        energy = None
        memory = None
        # GPU memory (NVML) is what a GPU deployment runs out of; host RSS only where no GPU is metered.
        gpu_memory = [r for r in readings if r.memory_mb is not None and r.details.get("memory_kind") == "gpu"]
        memory_readings = gpu_memory or [r for r in readings if r.memory_mb is not None]
        for reading in readings:
            if reading.energy_j:
                energy = (energy or 0.0) + sum(reading.energy_j.values())
                for domain, joules in reading.energy_j.items():
                    domains[domain] = domains.get(domain, 0.0) + joules
                if reading.source not in sources:
                    sources.append(reading.source)
            warnings.extend(w for w in reading.details.get("warnings", ()) if w not in warnings)
            if reading.energy_j:
                energy_details[reading.meter] = {k: v for k, v in reading.details.items() if k != "warnings"}
                if reading.details.get("triton_nv_energy_consumption_j") is not None:
                    triton_j.append(reading.details["triton_nv_energy_consumption_j"])
        for reading in memory_readings:
            memory = max(memory or 0.0, reading.memory_mb or 0.0)
            memory_source = reading.source + (" (GPU memory)" if reading in gpu_memory else "")
        totals.append(energy)
        if energy is not None and dynamic:
            assert idle_power_w is not None
            # Never below 1% of the total: a window cannot be free.
            energy = max(energy - idle_power_w * stats.duration_s, 0.01 * energy)
        energies.append(energy)
        per_window.append(Window(
            duration_s=stats.duration_s, success_count=stats.success_count, failure_count=stats.failure_count,
            throughput_per_s=stats.throughput_per_s, p50_ms=stats.percentile_ms(50), p95_ms=stats.percentile_ms(95),
            p99_ms=stats.percentile_ms(99), energy_j=energy, memory_mb=memory,
        ))
    have_energy = all(e is not None for e in energies)
    energy_total = sum(e for e in energies if e is not None) if have_energy else None
    per_j = [w.success_count / w.energy_j for w in per_window if w.energy_j]
    memories = [w.memory_mb for w in per_window if w.memory_mb is not None]

    return Measurement(
        config=trial,
        load=load.describe(),
        throughput_per_s=Spread.of([w.throughput_per_s for w in per_window]),
        p50_ms=float(np.percentile(latencies, 50)) if latencies else float("nan"),
        p95_ms=float(np.percentile(latencies, 95)) if latencies else float("nan"),
        p99_ms=Spread.of([w.p99_ms for w in per_window]),
        energy_j=energy_total,
        energy_source=" + ".join(sources) if have_energy and sources else SOURCE_UNAVAILABLE,
        energy_domains_j=domains if have_energy else {},
        inferences_per_j=Spread.of(per_j) if have_energy else Spread.of([]),
        memory_mb=max(memories) if memories else None,
        memory_source=memory_source,
        success_count=successes,
        failure_count=failures,
        duration_s=sum(w.duration_s for w in per_window),
        stable=stable,
        windows=tuple(per_window),
        error_samples=errors,
        warnings=tuple(warnings),
        idle_power_w=idle_power_w,
        energy_accounting="dynamic" if dynamic else "total",
        total_energy_j=sum(t for t in totals if t is not None) if have_energy else None,
        energy_details={**energy_details, **({"triton_nv_energy_consumption_j": sum(triton_j)} if triton_j else {})},
    )


def check_request_rate(load: LoadSpec, windows: list[WindowStats]) -> str | None:
    """Open loop: None when the windows completed the asked rate (within REQUEST_RATE_TOLERANCE); a warning when the
    requests were sent but the server completed fewer (the config cannot keep up: the request_rate constraint); and
    LoadToolError when the load tool did not even send them (a failed measurement, not the config's)."""
    asked = load.request_rate_per_s
    if asked is None or not windows:
        return None
    delivered = float(np.mean([w.throughput_per_s for w in windows]))
    if delivered >= (1 - REQUEST_RATE_TOLERANCE) * asked:
        return None
    sent = sent_rate_per_s(windows)
    if sent is not None and sent < (1 - REQUEST_RATE_TOLERANCE) * asked:
        raise LoadToolError(f"{load.engine} sent {sent:.0f} requests/s of the asked {asked:g} ({1 - sent / asked:.0%} "
                            f"short; {delivered:.0f} infer/s completed): the load tool could not send at that rate here")
    return (f"the config completed {delivered:.0f} infer/s of the asked {asked:g} ({1 - delivered / asked:.0%} short, "
            f"over {REQUEST_RATE_TOLERANCE:.0%}): it cannot keep up with that rate (request_rate constraint broken)")


def sent_rate_per_s(windows: list[WindowStats]) -> float | None:
    """Requests sent per second over the windows (back to back, in order) whose requests have all come back, i.e.
    those ending at least twice the slowest latency before the last one ends; None when unknown or none qualifies."""
    if any(w.sent_count is None for w in windows):
        return None
    slowest_ms = max((max(w.latencies_ms) for w in windows if w.latencies_ms), default=0.0)
    guard_s, after_s = 2 * slowest_ms / 1000, 0.0
    sent, duration_s = 0, 0.0
    for window in reversed(windows):
        if after_s >= guard_s:
            sent += window.sent_count or 0
            duration_s += window.duration_s
        after_s += window.duration_s
    return sent / duration_s if duration_s > 0 else None


def pool_measurements(runs: list[Measurement], settings: MeasureSettings) -> Measurement:
    """Combine repeated measurements of one config: spreads over every window of every run."""
    if len(runs) == 1:
        return runs[0]
    windows = [w for m in runs for w in m.windows]
    first = runs[0]
    energies = [w.energy_j for w in windows]
    have_energy = all(e is not None for e in energies)
    memories = [m.memory_mb for m in runs if m.memory_mb is not None]
    return replace(
        first,
        throughput_per_s=Spread.of([w.throughput_per_s for w in windows]),
        p50_ms=float(np.mean([m.p50_ms for m in runs])),
        p95_ms=float(np.mean([m.p95_ms for m in runs])),
        p99_ms=Spread.of([w.p99_ms for w in windows]),
        energy_j=sum(e for e in energies if e is not None) if have_energy else None,
        total_energy_j=sum(m.total_energy_j or 0.0 for m in runs) if have_energy else None,
        energy_domains_j={k: sum(m.energy_domains_j.get(k, 0.0) for m in runs) for k in first.energy_domains_j},
        inferences_per_j=Spread.of([w.success_count / w.energy_j for w in windows if w.energy_j])
        if have_energy else Spread.of([]),
        memory_mb=max(memories) if memories else None,
        success_count=sum(m.success_count for m in runs),
        failure_count=sum(m.failure_count for m in runs),
        duration_s=sum(m.duration_s for m in runs),
        stable=all(m.stable for m in runs),
        windows=tuple(windows),
        warnings=tuple(dict.fromkeys(w for m in runs for w in m.warnings)),
        repeats=len(runs),
        members={model: pool_measurements([m.members[model] for m in runs], settings) for model in first.members
                 if all(model in m.members for m in runs)},
    )
