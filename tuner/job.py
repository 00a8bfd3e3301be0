"""What a search is asked to do: the job (model, space, constraints, load, meters) and its settings (budgets,
sampler, study); both are checked when built, so bad flags fail before any server starts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import paths
from tuner.bench import Bench, LoadPolicy
from tuner.errors import BadInput
from tuner.events import Progress
from tuner.impact import ImpactInputs, resolve_inputs
from tuner.inputs import parse_shape_options
from tuner.measure import InputSource, MeasureSettings
from tuner.meters.select import MeterChoice
from tuner.model_config import ModelConfig, SetBase, load_model_config, to_text
from tuner.objective import Constraints, check_objective, violations
from tuner.results import Measurement, SetConfig, TrialConfig, ensure_writable_dir
from tuner.server.base import ServerLauncher
from tuner.server.choose import parse_gpus
from tuner.space import Space, space_from_name
from tuner.storage import Heartbeat

SAMPLERS = ("tpe", "gp", "grid", "random")


@dataclass(frozen=True)
class SearchSettings:
    """Budgets and sampler: --trials, --timeout, --patience, --sampler, --seed, --storage, --resume."""

    trials: int = 12
    timeout_s: float | None = None
    patience: int | None = None
    sampler: str = "tpe"
    seed: int = 0
    storage: str | None = None
    resume: bool = False
    repeats: int = 1
    top_k: int = 3
    study: str | None = None  # --study NAME: a shared study many workers contribute to (needs --storage)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)  # shared studies: how a dead worker is noticed
    poll_s: float = 1.0  # shared studies: how often a worker re-reads the study while it waits
    allow_mixed_hardware: bool = False  # shared studies: accept workers with another GPU model or meter
    first_trials: bool = True  # queue Space.first_params after the baseline (--no-first-trials: the sampler alone)
    screening: bool = True  # stop a trial early once clearly worse than the best, or clearly infeasible

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> SearchSettings:
        """The settings from --trials, --timeout, --patience, --sampler, --seed, --storage, --study, --resume,
        --repeats, the shared-study flags, --screening and --first-trials (worker has no --resume or --repeats)."""
        timeout_s = parse_duration(flags["timeout"]) if flags["timeout"] else None
        return cls(trials=flags["trials"], timeout_s=timeout_s, patience=flags["patience"], sampler=flags["sampler"],
                   seed=flags["seed"], storage=flags["storage"], resume=flags.get("resume", False),
                   repeats=flags.get("repeats", 1), study=flags["study"],
                   heartbeat=Heartbeat(flags["heartbeat_interval"], flags["grace_period"]),
                   allow_mixed_hardware=flags["allow_mixed_hardware"], screening=flags.get("screening", True),
                   first_trials=flags.get("first_trials", True))

    @property
    def shared(self) -> bool:
        """Many workers on one study: constant-liar TPE, heartbeats, the budget stored in the study."""
        return self.study is not None

    def __post_init__(self) -> None:
        if not 1 <= self.repeats <= 20:
            raise BadInput(f"--repeats: expected 1 to 20, got {self.repeats}")
        if not 1 <= self.trials <= 10_000:
            raise BadInput(f"--trials: expected 1 to 10000, got {self.trials}")
        if self.sampler not in SAMPLERS:
            raise BadInput(f"--sampler {self.sampler}: expected one of {', '.join(SAMPLERS)}")
        if self.patience is not None and self.patience < 1:
            raise BadInput(f"--patience: expected a positive number of trials, got {self.patience}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise BadInput(f"--timeout: expected a positive duration, got {self.timeout_s}")
        if self.study is not None and not self.storage:
            raise BadInput("--study needs --storage URL (a database or journal:///path/file every worker can reach)")
        if self.study is not None and self.resume:
            raise BadInput("--resume is not used with --study: a shared study is always joined")
        if self.study is not None and self.repeats > 1:
            raise BadInput("--repeats is not used with --study or --parallel (a shared study measures each config once)")
        if self.study is not None and self.sampler == "grid":
            raise BadInput("--sampler grid is not used with --study: use tpe or random for a shared study")


def parse_duration(text: str, flag: str = "--timeout") -> float:
    """'30m', '90s', '1h', '1h30m' or plain seconds -> seconds; a bad value is one line naming the flag."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", value)
    if not value or not parts or not any(parts.groups()):
        raise BadInput(f"{flag} {text}: expected a duration like 90s, 30m, 1h or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in parts.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


@dataclass(frozen=True)
class SearchJob:
    """What to search: the model, its space and constraints, and how every config is driven and measured."""

    model_repository: Path
    model: str
    base: ModelConfig | SetBase  # a set (modelset.SetJob): every model's own config
    space: Space
    constraints: Constraints
    load: LoadPolicy
    inputs: InputSource
    measure: MeasureSettings
    output: Path
    energy_meter: str = "auto"
    cpu_tdp_watts: float | None = None
    gpus: list[int] | None = None
    objective: str = "efficiency"  # --objective: what the study maximises and which config is exported

    impact: ImpactInputs = field(default_factory=ImpactInputs)  # stated traffic, carbon, prices (reports only)

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> SearchJob:
        """The job from the model, space, constraint, load, meter, impact and output flags; the output folder is
        created and proven writable."""
        if not flags.get("model"):
            raise BadInput("--model: name the model to tune (a folder in --model-repository), or give --models FILE")
        base = load_model_config(flags["model_repository"], flags["model"])
        space = space_from_name(flags["space_name"])
        impact = resolve_inputs(flags, space.impact, space.source)  # the impact flags over the space's impact: block
        constraints = Constraints.merge(space.constraints, min_throughput=flags["min_throughput"],
                                        max_p99_ms=flags["max_p99_ms"], max_memory_mb=flags["max_memory_mb"])
        load = LoadPolicy.from_flags(flags["concurrency"], flags["request_rate"], flags["request_timeout"],
                                     allow_auto=True, max_p99_ms=constraints.max_p99_ms,
                                     load_generator=flags["load_generator"], perf_analyzer=flags["perf_analyzer"])
        measure = MeasureSettings.from_flags(flags)
        ensure_writable_dir(flags["output"])
        return cls(model_repository=flags["model_repository"], model=flags["model"], base=base, space=space,
                   constraints=constraints, load=load,
                   inputs=InputSource(parse_shape_options(flags["shape"]), flags["input_data"]), measure=measure,
                   output=flags["output"], energy_meter=flags["energy_meter"], cpu_tdp_watts=flags["cpu_tdp_watts"],
                   gpus=parse_gpus(flags["gpus"]), objective=flags["objective"], impact=impact)

    def __post_init__(self) -> None:
        check_objective(self.objective)

    @property
    def model_space(self) -> Space:
        """The space as this model can take it (batching knobs only where the model batches)."""
        assert isinstance(self.base, ModelConfig)
        return self.space.for_model(self.base.max_batch_size > 0)

    def load_description(self) -> dict[str, Any]:
        """How load is applied, for the study's settings and the report."""
        return self.load.describe()

    def fingerprint(self) -> dict[str, Any]:
        """Settings that must not change when a study is resumed (else results would not compare)."""
        return {
            "model": self.model,
            "load": self.load_description(),
            "constraints": self.constraints.to_dict(),
            "space": self.space.source,
            "energy_meter": self.energy_meter,
            "energy_accounting": self.measure.energy_accounting,
            "window_s": self.measure.window_s,
            "objective": self.objective,
        }

    def shared_fingerprint(self) -> dict[str, Any]:
        """A shared study's settings: as fingerprint(), but the space by its knobs (workers keep the file in
        different folders) and the model's own config.pbtxt (every worker must tune the same model)."""
        assert isinstance(self.base, ModelConfig)
        knobs = json.loads(json.dumps([dataclasses.asdict(k) for k in self.space.knobs]))  # as stored: lists
        return {**self.fingerprint(), "space": knobs,
                "model_config": hashlib.sha256(to_text(self.base).encode()).hexdigest()[:16]}

    def violations(self, measurement: Measurement | None) -> dict[str, float]:
        """How far a measurement breaks the job's limits (objective.violations)."""
        return violations(measurement, self.constraints)

    def export(self, bench: Bench, config: TrialConfig | SetConfig) -> Path:
        """Load the config on the bench, smoke-test it and write OUTPUT/<model>/config.pbtxt; returns its path."""
        assert isinstance(config, TrialConfig)
        return bench.export(config, paths.exported_config_path(self.output, self.model))

    def bench(self, launcher: ServerLauncher, progress: Progress | None = None) -> Bench:
        """The bench every config of this search is measured on (a context manager)."""
        assert isinstance(self.base, ModelConfig)
        return Bench(launcher, self.model_repository, self.model, self.base, self.output, self.inputs, self.load,
                     self.measure, self.constraints, MeterChoice(self.energy_meter, self.cpu_tdp_watts, self.gpus),
                     progress)
