"""The model's config.pbtxt as a ModelConfig protobuf: read it, apply a TrialConfig, validate, write it."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from google.protobuf import json_format, text_format

from tuner.errors import BadInput
from tuner.fileio import atomic_write
from tuner.results import BATCHING_KNOBS, INSTANCE_KINDS, KNOB_SPECS, KNOBS, SetConfig, TrialConfig, normalize_kind

PB2_MODULE = "tritonclient.grpc.model_config_pb2"


def _model_config_pb2() -> ModuleType:
    """tritonclient's ModelConfig protobuf module, without importing the gRPC client package around it."""
    if PB2_MODULE in sys.modules:
        return sys.modules[PB2_MODULE]
    package = importlib.util.find_spec("tritonclient")
    if package is None or not package.submodule_search_locations:
        raise ImportError("tritonclient is not installed")
    path = Path(next(iter(package.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location(PB2_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered under its real name, so a later `import tritonclient.grpc` reuses it (one descriptor pool entry).
    sys.modules[PB2_MODULE] = module
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _model_config_pb2()
if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig
else:
    ModelConfig = model_config_pb2.ModelConfig

MAX_BATCH_SIZE_LIMIT = KNOB_SPECS["max_batch_size"].high


def model_dir(model_repository: Path, model: str) -> Path:
    """The model's directory inside the repository, checked to exist."""
    repo = Path(model_repository)
    if not repo.is_dir():
        raise BadInput(f"--model-repository {repo}: not a directory")
    path = repo / model
    if not (path / "config.pbtxt").is_file():
        found = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
        raise BadInput(
            f"--model {model}: no {model}/config.pbtxt in {repo}; models there: {', '.join(found) or 'none'}"
        )
    return path


def read_model_config(path: Path) -> ModelConfig:
    """Parse a config.pbtxt with protobuf text_format; errors name the file and line."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise BadInput(f"{path}:{exc} (expected a Triton ModelConfig in protobuf text format)") from None
    if not config.name:
        config.name = Path(path).parent.name
    return config


def load_model_config(model_repository: Path, model: str) -> ModelConfig:
    """Read the model's own config.pbtxt from the repository."""
    return read_model_config(model_dir(model_repository, model) / "config.pbtxt")


def apply_trial(base: ModelConfig, trial: TrialConfig) -> ModelConfig:
    """A copy of base with the trial's knobs applied; invalid knobs for this model raise BadInput."""
    validate_trial(base, trial)
    config = ModelConfig()
    config.CopyFrom(base)
    if trial.instance_count is not None or trial.instance_kind is not None:
        groups = config.instance_group
        if not groups:
            groups.add()
        # greentune tunes one instance group; extra groups would be counted twice.
        del groups[1:]
        group = groups[0]
        if trial.instance_count is not None:
            group.count = trial.instance_count
        if trial.instance_kind is not None:
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(trial.instance_kind)
            if trial.instance_kind != "KIND_GPU":
                del group.gpus[:]
    if trial.max_batch_size is not None:
        config.max_batch_size = trial.max_batch_size
    if trial.dynamic_batching is False:
        config.ClearField("dynamic_batching")
    elif trial.dynamic_batching is True:
        config.dynamic_batching.SetInParent()
    if trial.max_queue_delay_microseconds is not None:
        config.dynamic_batching.max_queue_delay_microseconds = trial.max_queue_delay_microseconds
    if trial.preferred_batch_size is not None:
        del config.dynamic_batching.preferred_batch_size[:]
        config.dynamic_batching.preferred_batch_size.extend(trial.preferred_batch_size)
    return config


def validate_trial(base: ModelConfig, trial: TrialConfig) -> None:
    """Raise BadInput naming the knob when the trial cannot apply to this model."""
    name = base.name or "model"
    count = KNOB_SPECS["instance_count"]
    if trial.instance_count is not None and not count.in_range(trial.instance_count):
        raise BadInput(f"instance_count: expected an integer from {count.low} to {count.high}, got {trial.instance_count}")
    if trial.instance_kind is not None and trial.instance_kind not in INSTANCE_KINDS:
        raise BadInput(f"instance_kind: expected one of {', '.join(INSTANCE_KINDS)}, got {trial.instance_kind}")
    batching_knobs = {k: v for k, v in trial.knobs().items() if k in BATCHING_KNOBS}
    if base.max_batch_size == 0 and batching_knobs:
        knob = next(iter(batching_knobs))
        raise BadInput(
            f"{knob}: model {name} has max_batch_size: 0 (it does not batch), so batching knobs are not valid for it"
        )
    if trial.max_batch_size is not None and not KNOB_SPECS["max_batch_size"].in_range(trial.max_batch_size):
        raise BadInput(f"max_batch_size: expected 1 to {MAX_BATCH_SIZE_LIMIT}, got {trial.max_batch_size}")
    batching_on = trial.dynamic_batching if trial.dynamic_batching is not None else base.HasField("dynamic_batching")
    if not batching_on and (trial.max_queue_delay_microseconds is not None or trial.preferred_batch_size):
        raise BadInput(
            "max_queue_delay_microseconds/preferred_batch_size: only valid with dynamic_batching=true"
        )
    delay = KNOB_SPECS["max_queue_delay_microseconds"]
    if trial.max_queue_delay_microseconds is not None and not delay.in_range(trial.max_queue_delay_microseconds):
        raise BadInput(
            f"max_queue_delay_microseconds: expected {delay.low} to {delay.high}, got {trial.max_queue_delay_microseconds}"
        )
    if trial.preferred_batch_size:
        limit = trial.max_batch_size if trial.max_batch_size is not None else base.max_batch_size
        bad = [b for b in trial.preferred_batch_size if not 1 <= b <= limit]
        if bad:
            raise BadInput(f"preferred_batch_size: each size must be from 1 to max_batch_size {limit}, got {bad[0]}")


def trial_of(config: ModelConfig) -> TrialConfig:
    """The knob values a ModelConfig has (the baseline trial of a model's own config)."""
    group = config.instance_group[0] if config.instance_group else None
    batches = config.max_batch_size > 0
    dyn = config.HasField("dynamic_batching")
    return TrialConfig(
        instance_count=(group.count or 1) if group else 1,
        instance_kind=model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) if group else "KIND_AUTO",
        max_batch_size=config.max_batch_size if batches else None,
        dynamic_batching=dyn if batches else None,
        max_queue_delay_microseconds=config.dynamic_batching.max_queue_delay_microseconds if dyn else None,
        preferred_batch_size=tuple(config.dynamic_batching.preferred_batch_size) or None if dyn else None,
    )



@dataclass(frozen=True)
class SetBase:
    """The own configs of a set of models tuned together (`search --models`), in the set's order; own_config,
    check_config and effective_key take it where they take one model's ModelConfig."""

    members: tuple[tuple[str, ModelConfig], ...]

    def of(self, model: str) -> ModelConfig:
        """One model's own config."""
        return dict(self.members)[model]


def own_config(base: ModelConfig | SetBase) -> TrialConfig | SetConfig:
    """The knob values of the model's own config (a set: every model's), i.e. the baseline trial."""
    if isinstance(base, SetBase):
        return SetConfig(tuple((model, trial_of(config)) for model, config in base.members))
    return trial_of(base)


def check_config(base: ModelConfig | SetBase, trial: TrialConfig | SetConfig) -> None:
    """BadInput naming the knob (in a set, the model too) when the config cannot apply."""
    if isinstance(base, SetBase):
        assert isinstance(trial, SetConfig)
        for model, config in base.members:
            try:
                validate_trial(config, trial.of(model))
            except BadInput as exc:
                raise BadInput(f"{model}: {exc}") from None
        return
    assert isinstance(trial, TrialConfig)
    validate_trial(base, trial)


def effective_key(base: ModelConfig | SetBase, trial: TrialConfig | SetConfig) -> str | None:
    """The identity of the config the server runs (two knob sets that render the same model config are one; a set's
    is every model's); None when the knobs are invalid for this model."""
    try:
        if isinstance(base, SetBase):
            assert isinstance(trial, SetConfig)
            keys = {model: trial_of(apply_trial(config, trial.of(model))).knobs() for model, config in base.members}
            return json.dumps(keys, sort_keys=True)
        assert isinstance(trial, TrialConfig)
        return trial_of(apply_trial(base, trial)).key()
    except BadInput:
        return None

def to_json(config: ModelConfig) -> str:
    """The config as JSON for tritonclient's load_model(config=...)."""
    return json_format.MessageToJson(config, preserving_proto_field_name=True)


def to_text(config: ModelConfig) -> str:
    """The config in protobuf text format, as config.pbtxt holds it."""
    return text_format.MessageToString(config)


def write_model_config(config: ModelConfig, path: Path) -> None:
    """Write config.pbtxt atomically: a temp file in the same folder, fsync, rename."""
    atomic_write(Path(path), to_text(config))


def parse_set_options(items: tuple[str, ...] | list[str]) -> TrialConfig:
    """Parse --set NAME=VALUE flags into a TrialConfig; errors name the flag and valid values."""
    knobs: dict[str, object] = {}
    valid = KNOBS
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not raw:
            raise BadInput(f"--set {item}: expected NAME=VALUE, e.g. --set instance_count=2")
        if name not in valid:
            raise BadInput(f"--set {item}: unknown knob {name!r}; valid: {', '.join(valid)}")
        try:
            if name == "dynamic_batching":
                lowered = raw.lower()
                if lowered not in ("true", "false", "on", "off", "1", "0"):
                    raise ValueError
                knobs[name] = lowered in ("true", "on", "1")
            elif name == "instance_kind":
                kind = normalize_kind(raw)
                if kind is None:
                    raise ValueError
                knobs[name] = kind
            elif name == "preferred_batch_size":
                knobs[name] = tuple(int(v) for v in raw.split(","))
            else:
                knobs[name] = int(raw)
        except ValueError:
            raise BadInput(f"--set {item}: expected {KNOB_SPECS[name].set_hint}") from None
    return TrialConfig.from_knobs(knobs)
