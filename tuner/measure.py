"""One trial: load the config into the server, warm up, run windows under the meters, return a Measurement."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tuner.errors import BadInput, LoadGenerationError, ServerDied
from tuner.inputs import Sample, input_specs, load_input_data, synthetic_samples
from tuner.load import LoadGenerator, LoadSpec, WindowStats, is_stable
from tuner.meters.base import SOURCE_UNAVAILABLE, Meter, Reading
from tuner.model_config import ModelConfig, apply_trial
from tuner.results import Measurement, Spread, TrialConfig, Window
from tuner.server import control
from tuner.server.base import Server

Progress = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class MeasureSettings:
    """How a trial is measured: warm-up, window length, stability rule, failure tolerance."""

    warmup_s: float = 2.0
    window_s: float = 2.0
    max_windows: int = 10
    stable_windows: int = 3
    stability_tolerance: float = 0.10
    max_failure_rate: float = 0.05

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise BadInput(f"--window: expected positive seconds, got {self.window_s}")
        if self.warmup_s < 0:
            raise BadInput(f"--warmup: expected 0 or more seconds, got {self.warmup_s}")
        if not 1 <= self.stable_windows <= self.max_windows:
            raise BadInput(
                f"--max-windows: expected at least {self.stable_windows} (the stable-window count), got {self.max_windows}"
            )
        if not 0 < self.stability_tolerance < 1:
            raise BadInput(f"--stability: expected a fraction between 0 and 1, got {self.stability_tolerance}")


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


def measure_trial(
    server: Server,
    model: str,
    base_config: ModelConfig,
    trial: TrialConfig,
    load: LoadSpec,
    inputs: InputSource,
    meters: list[Meter],
    settings: MeasureSettings,
    progress: Progress | None = None,
) -> Measurement:
    """Load the trial's config, then measure it; raises ModelLoadError, ServerDied or LoadGenerationError."""
    samples = load_trial(server, model, base_config, trial, inputs, progress)
    return asyncio.run(_measure(server, model, trial, load, samples, meters, settings, progress))


def load_trial(
    server: Server, model: str, base_config: ModelConfig, trial: TrialConfig, inputs: InputSource,
    progress: Progress | None = None,
) -> list[Sample]:
    """Load the trial's config into the server and return request inputs for it."""
    config = apply_trial(base_config, trial)
    _emit(progress, "loading", {"config": trial.describe()})
    control.load_config(server, model, config)
    return inputs.samples(server, model)


def measure_auto_concurrency(
    server: Server,
    model: str,
    base_config: ModelConfig,
    trial: TrialConfig,
    max_p99_ms: float,
    inputs: InputSource,
    meters: list[Meter],
    settings: MeasureSettings,
    request_timeout_s: float = 30.0,
    max_concurrency: int = 256,
    progress: Progress | None = None,
) -> Measurement:
    """Raise concurrency (1, 2, 4, ...) while p99 stays within max_p99_ms and throughput grows; measure there."""
    samples = load_trial(server, model, base_config, trial, inputs, progress)
    chosen, best_throughput, concurrency = 1, 0.0, 1
    while concurrency <= max_concurrency:
        stats = asyncio.run(_probe(server, model, samples, LoadSpec(concurrency, None, request_timeout_s), settings))
        _check_alive(server)
        p99 = stats.percentile_ms(99)
        _emit(progress, "probe", {"concurrency": concurrency, "throughput_per_s": stats.throughput_per_s, "p99_ms": p99})
        if not p99 <= max_p99_ms:
            break
        if stats.throughput_per_s < best_throughput * 1.03:
            break  # saturated: more clients only add queueing
        chosen, best_throughput = concurrency, stats.throughput_per_s
        concurrency *= 2
    load = LoadSpec(chosen, None, request_timeout_s)
    measurement = asyncio.run(_measure(server, model, trial, load, samples, meters, settings, progress))
    return replace(measurement, load={"mode": "auto", "concurrency": chosen, "max_p99_ms": max_p99_ms})


async def _probe(server: Server, model: str, samples: list[Sample], load: LoadSpec, settings: MeasureSettings) -> WindowStats:
    async with LoadGenerator(server.grpc_url, model, samples, load) as generator:
        await generator.window(min(settings.warmup_s, 0.5))
        return await generator.window(settings.window_s)


async def _measure(
    server: Server,
    model: str,
    trial: TrialConfig,
    load: LoadSpec,
    samples: list[Sample],
    meters: list[Meter],
    settings: MeasureSettings,
    progress: Progress | None,
) -> Measurement:
    windows: list[tuple[WindowStats, list[Reading]]] = []
    async with LoadGenerator(server.grpc_url, model, samples, load) as generator:
        if settings.warmup_s > 0:
            _emit(progress, "warmup", {"seconds": settings.warmup_s})
            await generator.window(settings.warmup_s)
            _check_alive(server)
        for index in range(settings.max_windows):
            for meter in meters:
                meter.begin()
            try:
                stats = await generator.window(settings.window_s)
            finally:
                readings = [meter.end() for meter in meters]
            _check_alive(server)
            windows.append((stats, readings))
            _emit(progress, "window", {"index": index + 1, "max": settings.max_windows,
                                       "throughput_per_s": stats.throughput_per_s, "p99_ms": stats.percentile_ms(99)})
            if is_stable([w.throughput_per_s for w, _ in windows], [w.percentile_ms(99) for w, _ in windows],
                         settings.stability_tolerance, settings.stable_windows):
                break
    for meter in meters:
        meter.close()
    return summarize(trial, load, windows, settings)


def _check_alive(server: Server) -> None:
    if not server.is_alive():
        raise ServerDied(f"tritonserver died during measurement; last log lines:\n{server.log_tail()}")


def _emit(progress: Progress | None, event: str, data: dict[str, Any]) -> None:
    if progress is not None:
        progress(event, data)


def summarize(
    trial: TrialConfig, load: LoadSpec, windows: list[tuple[WindowStats, list[Reading]]], settings: MeasureSettings
) -> Measurement:
    """Aggregate the final windows into a Measurement; too many failed requests raise LoadGenerationError."""
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
    per_window: list[Window] = []
    energies: list[float | None] = []
    sources: list[str] = []
    domains: dict[str, float] = {}
    memory_source = SOURCE_UNAVAILABLE
    for stats, readings in used:
        energy = None
        memory = None
        for reading in readings:
            if reading.energy_j:
                energy = (energy or 0.0) + sum(reading.energy_j.values())
                for domain, joules in reading.energy_j.items():
                    domains[domain] = domains.get(domain, 0.0) + joules
                if reading.source not in sources:
                    sources.append(reading.source)
            if reading.memory_mb is not None:
                memory = max(memory or 0.0, reading.memory_mb)
                memory_source = reading.source
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
    )
