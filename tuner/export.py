"""greentune export: a saved search's trial written as config.pbtxt, after a Bench loads and serves it once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tuner import paths
from tuner.bench import Bench
from tuner.errors import BadInput
from tuner.measure import InputSource
from tuner.model_config import ModelConfig, apply_trial, write_model_config
from tuner.results import SetConfig, TrialConfig, TrialResult
from tuner.server.base import ServerLauncher


def export_trial(output_dir: Path, number: int, destination: Path | None, launcher: ServerLauncher | None, *,
                 model_repository: Path | None = None, from_study: bool = False) -> Path:
    """Write trial `number` of a saved search as config.pbtxt; with a launcher, prove it loads and serves first.

    The model name must be one folder name and, with a launcher, the server loads from `model_repository` (this
    machine's flag), else from the repository summary.json records, never when the folder was filled from a shared
    study (`from_study`): any worker can write a study, and a server started here must not load from where it says.
    """
    output_dir = Path(output_dir)
    summary_path = paths.summary_path(output_dir)
    record = paths.trial_record_path(output_dir, number)
    if not summary_path.exists():
        raise BadInput(f"{output_dir}: no {paths.SUMMARY} here; give the --output folder of a greentune search")
    if not record.exists():
        found = [paths.trial_number_of(p) for p in paths.trial_record_paths(output_dir)]
        raise BadInput(f"--trial {number}: no such trial in {output_dir}; trials: {', '.join(map(str, found)) or 'none'}")
    summary = json.loads(summary_path.read_text())
    result = TrialResult.from_dict(json.loads(record.read_text())["trial"])
    if isinstance(result.config, SetConfig):
        return _export_set(summary, summary_path, output_dir, number, result.config, destination, launcher,
                           model_repository, from_study)
    base = ModelConfig()
    text_format.Parse(summary["model_config_pbtxt"], base)
    model = paths.model_folder_name(summary.get("model"), f"{summary_path}: model")
    path = Path(destination) if destination else paths.exported_config_path(output_dir, model, number)
    assert isinstance(result.config, TrialConfig)
    if launcher is None:
        write_model_config(apply_trial(base, result.config), path)
        return path
    repository = model_repository or (None if from_study else summary.get("model_repository"))
    if not repository:
        raise BadInput(f"--verify: give --model-repository (the folder on this machine that holds {model}); the "
                       "repository a shared study names is not used, any worker can write it; or --no-verify")
    with Bench(launcher, Path(repository), model, base, paths.export_server_dir(output_dir),
               InputSource(_shapes(summary))) as bench:
        return bench.export(result.config, path)


def _export_set(summary: dict[str, Any], summary_path: Path, output_dir: Path, number: int, config: SetConfig,
                destination: Path | None, launcher: ServerLauncher | None, model_repository: Path | None,
                from_study: bool) -> Path:
    """A set's trial: every model's config to DESTINATION/<model>/config.pbtxt (default OUTPUT/<model>/
    config.trial-N.pbtxt), each loaded and served once on a server of its own where a launcher is given; returns
    the folder."""
    models = summary.get("models") or {}
    folder = Path(destination) if destination else output_dir
    repository = model_repository or (None if from_study else summary.get("model_repository"))
    if launcher is not None and not repository:
        raise BadInput("--verify: give --model-repository (the folder on this machine that holds the set's models); "
                       "the repository a shared study names is not used, any worker can write it; or --no-verify")
    for model, trial in config.members:
        name = paths.model_folder_name(model, f"{summary_path}: models")
        own = (models.get(model) or {}).get("model_config_pbtxt")
        if not own:
            raise BadInput(f"{summary_path}: models.{model}.model_config_pbtxt: missing; rerun the search to rewrite it")
        base = ModelConfig()
        text_format.Parse(own, base)
        path = folder / name / "config.pbtxt" if destination else paths.exported_config_path(output_dir, name, number)
        if launcher is None:
            write_model_config(apply_trial(base, trial), path)
            continue
        shapes = {k: tuple(v) for k, v in ((models.get(model) or {}).get("input_shapes") or {}).items()}
        with Bench(launcher, Path(str(repository)), name, base, paths.export_server_dir(output_dir),
                   InputSource(shapes)) as bench:
            bench.export(trial, path)
    return folder


def _shapes(summary: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = summary.get("input_shapes") or {}
    return {k: tuple(v) for k, v in shapes.items()}
