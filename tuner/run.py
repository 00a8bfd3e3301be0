"""Glue for the commands besides search: measure one config on a fresh bench, and report or export from an output
folder or a shared study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner import paths
from tuner.bench import Bench, LoadPolicy
from tuner.errors import BadInput, GreentuneError
from tuner.events import Progress
from tuner.export import export_trial
from tuner.inputs import parse_shape_options
from tuner.measure import InputSource, MeasureSettings
from tuner.meters.select import MeterChoice
from tuner.model_config import ModelConfig, load_model_config, parse_set_options, validate_trial
from tuner.report import write_reports
from tuner.results import Measurement, TrialConfig, ensure_writable_dir, write_json
from tuner.search_run import materialize_study
from tuner.server.choose import LauncherChoice, parse_gpus
from tuner.server.local import LocalLauncher


@dataclass(frozen=True)
class MeasureJob:
    """What `greentune measure` is asked to do: one config of a model, under one load, on one launcher's server."""

    model_repository: Path
    model: str
    base: ModelConfig
    trial: TrialConfig
    output: Path
    settings: MeasureSettings
    load: LoadPolicy
    inputs: InputSource
    meters: MeterChoice
    launchers: LauncherChoice

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> MeasureJob:
        """The job from measure's flags (--set as `settings`); every flag is checked before any server starts."""
        base = load_model_config(flags["model_repository"], flags["model"])
        trial = parse_set_options(flags["settings"])
        ensure_writable_dir(flags["output"])
        validate_trial(base, trial)
        settings, load, inputs, meters = measurement_parts(flags)
        return cls(flags["model_repository"], flags["model"], base, trial, flags["output"], settings, load, inputs,
                   meters, LauncherChoice.from_flags(flags))


def measurement_parts(flags: dict[str, Any]) -> tuple[MeasureSettings, LoadPolicy, InputSource, MeterChoice]:
    """How measure and compare measure, from the load and meter flags: windows, a fixed load (no auto), the
    request inputs and the meters."""
    load = LoadPolicy.from_flags(flags["concurrency"], flags["request_rate"], flags["request_timeout"],
                                 load_generator=flags["load_generator"], perf_analyzer=flags["perf_analyzer"])
    return (MeasureSettings.from_flags(flags), load, InputSource(parse_shape_options(flags["shape"]),
                                                                  flags["input_data"]),
            MeterChoice(flags["energy_meter"], flags["cpu_tdp_watts"], parse_gpus(flags["gpus"])))


def measure_command(job: MeasureJob, progress: Progress | None = None) -> tuple[Measurement, Path]:
    """Start the server, measure the job's config (idle power with it loaded), write OUTPUT/measurement.json."""
    bench = Bench(job.launchers.launcher(pull_progress=progress), job.model_repository, job.model, job.base,
                  job.output, job.inputs, job.load, job.settings, meters=job.meters, progress=progress,
                  idle_config=job.trial)
    return measure_one(bench, job.trial)


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


def source_folder(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None) -> Path:
    """OUTPUT_DIR, or a folder filled from the shared study (--storage URL --study NAME -o DIR)."""
    if study is None:  # an output folder (--storage, if given, is only where its study lives)
        if output_dir is None:
            raise BadInput("give OUTPUT_DIR (a search's --output folder) or --storage URL --study NAME -o DIR")
        if output is not None:
            raise BadInput("-o is only used with --storage and --study (OUTPUT_DIR is written in place)")
        return output_dir
    if not storage or output_dir is not None:
        raise BadInput("give --storage URL and --study NAME together, with -o DIR instead of OUTPUT_DIR")
    return materialize_study(storage, study, output or Path("greentune-out"))


def report_command(output_dir: Path | None, storage: str | None, study: str | None,
                   output: Path | None) -> list[str]:
    """Re-render the reports of an output folder or a shared study; returns the paths written."""
    return write_reports(str(source_folder(output_dir, storage, study, output)), storage=storage)


def export_command(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None,
                   trial_number: int, destination: Path | None, verify: bool, tritonserver: Path | None,
                   model_repository: Path | None = None) -> Path:
    """Write one trial's config.pbtxt from an output folder or a shared study; with verify, a local server loads
    it and answers a smoke inference first."""
    folder = source_folder(output_dir, storage, study, output)
    return export_trial(folder, trial_number, destination, LocalLauncher(tritonserver) if verify else None,
                        model_repository=model_repository, from_study=study is not None)
