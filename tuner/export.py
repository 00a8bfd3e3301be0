"""Write the chosen config.pbtxt atomically, after loading it once into the server to prove it works."""

from __future__ import annotations

from pathlib import Path

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
