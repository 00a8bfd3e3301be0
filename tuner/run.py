"""Glue for one-off commands: start a server, measure one trial under the selected meters, save the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings, Progress, load_trial, measure_idle, measure_loaded
from tuner.meters.select import select_meters
from tuner.model_config import ModelConfig
from tuner.provenance import environment
from tuner.results import Measurement, TrialConfig, write_json
from tuner.server import control


def measure_one(
    model_repository: Path,
    model: str,
    base: ModelConfig,
    trial: TrialConfig,
    launcher: Any,
    load: LoadSpec,
    inputs: InputSource,
    settings: MeasureSettings,
    output: Path,
    energy_meter: str = "auto",
    cpu_tdp_watts: float | None = None,
    gpus: list[int] | None = None,
    progress: Progress | None = None,
) -> tuple[Measurement, Path]:
    """Measure one config on a fresh server and write OUTPUT/measurement.json; returns both."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with launcher.start(model_repository, output) as server:
        meters = select_meters(server, energy_meter, cpu_tdp_watts, gpus)
        samples = load_trial(server, model, base, trial, inputs, progress)
        if progress is not None:
            progress("idle", {"seconds": settings.idle_s})
        idle = measure_idle(server, meters, settings.idle_s)
        idle_w = sum(idle.values()) if idle else None
        measurement = measure_loaded(server, model, trial, load, samples, meters, settings, progress, idle_w)
        env = environment(control.server_version(server), server.details.get("source", server.kind))
    meter_details = [m.name for m in meters]
    path = output / "measurement.json"
    write_json(path, {"model": model, "measurement": measurement.to_dict(), "idle_power_w": idle,
                      "environment": env, "meters": meter_details})
    return measurement, path
