"""Glue for `greentune measure`: measure one config on a fresh bench and save the result."""

from __future__ import annotations

from pathlib import Path

from tuner import paths
from tuner.bench import Bench
from tuner.errors import GreentuneError
from tuner.results import Measurement, TrialConfig, write_json


def measure_one(bench: Bench, trial: TrialConfig) -> tuple[Measurement, Path]:
    """Measure one config on the bench's server and write OUTPUT/measurement.json; returns both.

    The bench should be built with idle_config=trial, so idle power is measured with this config loaded.
    """
    bench.output.mkdir(parents=True, exist_ok=True)
    with bench:
        result = bench.measure(trial, 0)
    if result.measurement is None or result.failure_reason is not None:
        raise GreentuneError(result.failure_reason or "the measurement failed")
    path = paths.measurement_path(bench.output)
    write_json(path, {"model": bench.model, "measurement": result.measurement.to_dict(),
                      "idle_power_w": bench.idle_power_w, "environment": bench.environment,
                      "meters": list(bench.meter_details)})
    return result.measurement, path
