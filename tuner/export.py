"""Write the chosen config.pbtxt atomically, after loading it once into the server to prove it works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.measure import InputSource, load_trial
from tuner.model_config import ModelConfig, apply_trial, read_model_config, write_model_config
from tuner.results import TrialConfig
from tuner.server import control
from tuner.server.base import Server


def export_config(server: Server, model: str, base: ModelConfig, config: TrialConfig, inputs: InputSource,
                  path: Path) -> Path:
    """Load config on the server, run a smoke inference, then write path (temp file + rename, re-read to verify)."""
    rendered = apply_trial(base, config)
    samples = load_trial(server, model, base, config, inputs)
    control.smoke_infer(server, model, samples[0])
    write_model_config(rendered, path)
    if read_model_config(path) != rendered:  # pragma: no cover - would mean a broken filesystem
        raise OSError(f"{path}: written config does not read back equal")
    return path


def export_trial(output_dir: Path, number: int, destination: Path | None, launcher: Any | None) -> Path:
    """Write trial `number` of a saved search as config.pbtxt; with a launcher, prove it loads and serves first."""
    import json

    from google.protobuf import text_format

    from tuner.errors import BadInput
    from tuner.results import TrialResult

    output_dir = Path(output_dir)
    summary_path = output_dir / "summary.json"
    record = output_dir / "trials" / f"trial-{number:04d}.json"
    if not summary_path.exists():
        raise BadInput(f"{output_dir}: no summary.json here; give the --output folder of a greentune search")
    if not record.exists():
        found = sorted(int(p.stem.split("-")[1]) for p in (output_dir / "trials").glob("trial-*.json"))
        raise BadInput(f"--trial {number}: no such trial in {output_dir}; trials: {', '.join(map(str, found)) or 'none'}")
    summary = json.loads(summary_path.read_text())
    result = TrialResult.from_dict(json.loads(record.read_text())["trial"])
    base = ModelConfig()
    text_format.Parse(summary["model_config_pbtxt"], base)
    model = summary["model"]
    path = Path(destination) if destination else output_dir / model / f"trial-{number}" / "config.pbtxt"
    if launcher is None:
        write_model_config(apply_trial(base, result.config), path)
        return path
    with launcher.start(Path(summary["model_repository"]), output_dir / "export-server") as server:
        return export_config(server, model, base, result.config, InputSource(_shapes(summary)), path)


def _shapes(summary: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    shapes = summary.get("input_shapes") or {}
    return {k: tuple(v) for k, v in shapes.items()}
