"""A set of models tuned together on one server (`search --models FILE`): each model's load, inputs and limits read
from the set file; the joint space (one config per model, sampled together, its params named MODEL/knob); and the
job that searches it, which the loop runs like any other (the set's config, key and checks answer for it)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import paths
from tuner.bench import Bench, LoadPolicy
from tuner.errors import BadInput
from tuner.events import Progress
from tuner.impact import resolve_inputs
from tuner.inputs import parse_shape_options
from tuner.job import SearchJob
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings
from tuner.meters.select import MeterChoice
from tuner.model_config import SetBase, load_model_config, to_text
from tuner.objective import Constraints, set_violations
from tuner.results import Measurement, SetConfig, TrialConfig, ensure_writable_dir
from tuner.server.base import ServerLauncher
from tuner.server.choose import parse_gpus
from tuner.set_bench import Member, SetBench, member_limits
from tuner.space import Space, TrialLike, parse_yaml, space_from_name

MEMBER_KEYS = ("concurrency", "request_rate", "max_p99_ms", "min_throughput", "shape", "input_data", "space")
TOP_KEYS = ("models", "max_memory_mb")
# Flags that are each model's own in a set: given with --models they would be ambiguous, so they are refused.
PER_MODEL_FLAGS = {"concurrency": "--concurrency", "request_rate": "--request-rate", "shape": "--shape",
                   "input_data": "--input-data", "min_throughput": "--min-throughput", "max_p99_ms": "--max-p99-ms"}


def load_set_file(path: Path, repository: Path, default_space: str, template: LoadSpec) -> tuple[list[Member], float | None]:
    """The members of a set file and its max_memory_mb (or None); every error is one line naming the file and field.
    `template` carries the request timeout and load engine every model's load shares."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"--models {path}: cannot read ({exc.strerror})") from None
    document = parse_yaml(text, f"--models {path}")
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise BadInput(f"{source}: models: expected a mapping of model names to their load and limits, e.g. "
                       "{mlp: {concurrency: 8, max_p99_ms: 50}, other: {request_rate: 100}}")
    for key in document:
        if key not in TOP_KEYS:
            raise BadInput(f"{source}: unknown key {key!r}; valid: {', '.join(TOP_KEYS)}")
    raw_models = document["models"]
    if len(raw_models) < 2:
        raise BadInput(f"{source}: models: a set needs at least two models (for one, use --model)")
    members = [_member(str(name), raw, Path(path), repository, default_space, template)
               for name, raw in raw_models.items()]
    memory = document.get("max_memory_mb")
    if memory is not None and not (isinstance(memory, int | float) and not isinstance(memory, bool) and memory > 0):
        raise BadInput(f"{source}: max_memory_mb: expected a positive number of MB (the whole server), got {memory!r}")
    return members, float(memory) if memory is not None else None


def members_from_flags(flags: dict[str, Any], default_space: str) -> tuple[list[Member], float | None]:
    """The set of --models FILE (search and compare): the flags that are each model's own refused (one line), then
    the file read with the load engine and request timeout every model shares."""
    if flags.get("model"):
        raise BadInput("--model: give either --model NAME or --models FILE (a set), not both")
    for key, flag in PER_MODEL_FLAGS.items():
        if flags.get(key) not in (None, ()):
            raise BadInput(f"{flag}: with --models each model's load and limits are in {flags['models']} "
                           f"(keys {', '.join(MEMBER_KEYS)})")
    template = LoadPolicy.from_flags("1", None, flags["request_timeout"], load_generator=flags["load_generator"],
                                     perf_analyzer=flags["perf_analyzer"]).spec
    return load_set_file(flags["models"], flags["model_repository"], default_space, template)


def _member(model: str, raw: Any, path: Path, repository: Path, default_space: str, template: LoadSpec) -> Member:
    where = f"{path}: models.{model}"
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: expected a mapping of {', '.join(MEMBER_KEYS)}")
    for key in raw:
        if key not in MEMBER_KEYS:
            raise BadInput(f"{where}: unknown key {key!r}; valid: {', '.join(MEMBER_KEYS)}")
    try:
        base = load_model_config(repository, model)
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None

    def number(key: str, integer: bool = False) -> Any:
        value = raw.get(key)
        if value is None:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, int | float) and math.isfinite(value)
        if isinstance(value, bool) or not ok or value <= 0:
            kind = "a positive integer" if integer else "a positive number"
            raise BadInput(f"{where}.{key}: expected {kind}, got {value!r}")
        return value

    concurrency, rate = number("concurrency", integer=True), number("request_rate")
    if concurrency is not None and rate is not None:
        raise BadInput(f"{where}: give concurrency or request_rate, not both")
    try:
        load = dataclasses.replace(template, concurrency=None if rate is not None else concurrency or 8,
                                   request_rate_per_s=rate)
        space = space_from_name(str(raw.get("space") or default_space)).for_model(base.max_batch_size > 0)
        # The model's limits; where the file gives none, its space's (the server's memory is the set's, not here).
        constraints = Constraints(
            min_throughput_per_s=number("min_throughput") or space.constraints.get("min_throughput"),
            max_p99_ms=number("max_p99_ms") or space.constraints.get("max_p99_ms"))
    except BadInput as exc:
        raise BadInput(f"{where}: {exc}") from None
    shapes = raw.get("shape") or []
    shapes = [shapes] if isinstance(shapes, str) else shapes
    if not isinstance(shapes, list) or not all(isinstance(s, str) for s in shapes):
        raise BadInput(f"{where}.shape: expected NAME:d1,d2 or a list of them, e.g. INPUT:4,256")
    try:
        inputs = InputSource(parse_shape_options(shapes), _relative(raw.get("input_data"), path))
    except BadInput as exc:
        raise BadInput(f"{where}.shape: {exc}") from None
    if inputs.input_data is not None and not inputs.input_data.is_file():
        raise BadInput(f"{where}.input_data: no such file {inputs.input_data}")
    return Member(model, base, space, constraints, load, inputs)


def _relative(value: Any, path: Path) -> Path | None:
    """A path in the set file, relative to the file's folder."""
    if value is None:
        return None
    candidate = Path(str(value))
    return candidate if candidate.is_absolute() else Path(path).parent / candidate


class _Prefixed:
    """A trial whose params are one model's: each name is stored as MODEL/name, so the set's models never collide."""

    def __init__(self, trial: TrialLike, model: str) -> None:
        self.trial, self.prefix = trial, f"{model}/"

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self.trial.suggest_int(self.prefix + name, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.trial.suggest_categorical(self.prefix + name, choices)


@dataclass(frozen=True)
class SetSpace:
    """The joint space of a set: each model's own space, sampled together; answers what the loop asks of a Space."""

    members: tuple[tuple[str, Space], ...]
    in_flight: dict[str, int | None] = field(default_factory=dict)  # each model's concurrency (first configs)

    def sample(self, trial: TrialLike) -> SetConfig:
        """One config per model, each from its own space under its own param names."""
        return SetConfig(tuple((model, space.sample(_Prefixed(trial, model))) for model, space in self.members))

    def params_of(self, config: SetConfig) -> dict[str, Any]:
        """Optuna params that make sample() return config."""
        return {f"{model}/{name}": value for model, space in self.members
                for name, value in space.params_of(config.of(model)).items()}

    def first_params(self, in_flight: int | None, baseline: SetConfig | None = None) -> list[dict[str, Any]]:
        """Each model's first configs (Space.first_params at its own concurrency), zipped: the i-th set holds every
        model's i-th first config, or its own config where it has fewer; `in_flight` is the set's, unused."""
        per_model = []
        for model, space in self.members:
            own = baseline.of(model) if baseline is not None else None
            first = space.first_params(self.in_flight.get(model), own)
            per_model.append((model, first, space.params_of(own) if own is not None else {}))
        out = []
        for index in range(max((len(first) for _, first, _ in per_model), default=0)):
            params: dict[str, Any] = {}
            for model, first, own_params in per_model:
                chosen = first[index] if index < len(first) else own_params
                params.update({f"{model}/{name}": value for name, value in chosen.items()})
            out.append(params)
        return out

    def grid(self) -> dict[str, list[Any]]:
        """Every param of every model and its values."""
        return {f"{model}/{name}": values for model, space in self.members for name, values in space.grid().items()}

    def grid_configs(self) -> list[SetConfig]:
        """Every distinct set of configs: the product of each model's distinct configs."""
        each = [[(model, config) for config in space.grid_configs()] for model, space in self.members]
        return [SetConfig(tuple(combo)) for combo in itertools.product(*each)]


@dataclass(frozen=True)
class SetJob(SearchJob):
    """A search over a set of models on one server: `model` names the set (MODEL+MODEL...), `base` holds every
    model's own config, `constraints` the whole server's (memory); each member has its own load and limits."""

    members: tuple[Member, ...] = ()
    sharing: str = "best"  # --sharing: measure each model alone with its config in the best set, the baseline, or off

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> SetJob:
        """The job from --models FILE and the flags every model shares (space, meter, budgets, outputs)."""
        members, memory = members_from_flags(flags, flags["space_name"])
        space = space_from_name(flags["space_name"])
        impact = resolve_inputs(flags, space.impact, space.source)
        memory = flags["max_memory_mb"] if flags["max_memory_mb"] is not None else memory
        constraints = Constraints(max_memory_mb=memory if memory is not None else space.constraints.get("max_memory_mb"))
        ensure_writable_dir(flags["output"])
        return cls(model_repository=flags["model_repository"], model="+".join(m.model for m in members),
                   base=SetBase(tuple((m.model, m.base) for m in members)), space=space, constraints=constraints,
                   load=LoadPolicy(members[0].load), inputs=InputSource({}), measure=MeasureSettings.from_flags(flags),
                   output=flags["output"], energy_meter=flags["energy_meter"], cpu_tdp_watts=flags["cpu_tdp_watts"],
                   gpus=parse_gpus(flags["gpus"]), objective=flags["objective"], impact=impact, members=tuple(members),
                   sharing=flags.get("sharing") or "best")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sharing not in ("best", "baseline", "off"):
            raise BadInput(f"--sharing {self.sharing}: expected best, baseline or off")

    @property
    def model_space(self) -> SetSpace:  # type: ignore[override]
        """The joint space: each model's space as it can take it."""
        return SetSpace(tuple((m.model, m.space) for m in self.members),
                        {m.model: m.load.concurrency for m in self.members})

    def violations(self, measurement: Measurement | None) -> dict[str, float]:
        """The server's limits on the set's figures, each model's (named MODEL/constraint) on its own."""
        return set_violations(measurement, self.constraints, member_limits(self.members))

    def load_description(self) -> dict[str, Any]:
        """Each model's load."""
        return {"mode": "set", "members": {m.model: m.load.describe() for m in self.members}}

    def fingerprint(self) -> dict[str, Any]:
        """As one model's, plus each model's load, limits, space and input shapes."""
        members = {m.model: {"constraints": m.constraints.to_dict(), "space": m.space.source,
                             "shapes": {k: list(v) for k, v in m.inputs.shapes.items()}} for m in self.members}
        return {**super().fingerprint(), "members": members}

    def shared_fingerprint(self) -> dict[str, Any]:
        """As fingerprint(), with every model's knobs and own config.pbtxt instead of file names."""
        fingerprint = self.fingerprint()
        for member in self.members:
            entry = fingerprint["members"][member.model]
            entry["space"] = json.loads(json.dumps([dataclasses.asdict(k) for k in member.space.knobs]))
            entry["model_config"] = hashlib.sha256(to_text(member.base).encode()).hexdigest()[:16]
        fingerprint["space"] = "per model"
        return fingerprint

    def bench(self, launcher: ServerLauncher, progress: Progress | None = None) -> Bench:
        """A bench that loads every model of the set and drives each at its own load."""
        return SetBench(launcher, self.model_repository, self.members, self.output, self.measure, self.constraints,
                        MeterChoice(self.energy_meter, self.cpu_tdp_watts, self.gpus), progress)

    def export(self, bench: Bench, config: TrialConfig | SetConfig) -> Path:
        """Every model's config of the set to OUTPUT/<model>/config.pbtxt (each loaded and smoke-tested); returns the
        output folder."""
        assert isinstance(bench, SetBench) and isinstance(config, SetConfig)
        for member in self.members:
            bench.export_member(member.model, config.of(member.model),
                                paths.exported_config_path(self.output, member.model))
        return self.output


def job_from_flags(flags: dict[str, Any]) -> SearchJob:
    """The search's job: a set's with --models FILE, else one model's (--model)."""
    return SetJob.from_flags(flags) if flags.get("models") else SearchJob.from_flags(flags)


SHARING_NOTE = ("What serving the set on one server saves against each model on a server of its own: each model was "
                "measured alone (the others unloaded) with its config of the set named in `basis`, at its own load; "
                "the separate servers' power is each model's joules per inference alone times its rate in the set. "
                "Total energy, idle included (a server of its own idles too). Under a closed loop a model's rate alone "
                "can differ from its rate in the set; its joules per inference are taken at the rate it ran alone.")


def measure_sharing(job: SetJob, bench: Bench, outcome: Any) -> dict[str, Any] | None:
    """--sharing best|baseline: measure each model alone with its config of the best set (or its own config) and
    compare with the set on one server; None with --sharing off."""
    if job.sharing == "off":
        return None
    chosen = outcome.best if job.sharing == "best" else outcome.baseline
    if chosen is None or chosen.measurement is None or not isinstance(chosen.config, SetConfig):
        what = "no feasible set" if job.sharing == "best" else "the baseline was not measured"
        return {"basis": job.sharing, "saving_fraction": None, "reason": f"{what}: nothing to compare",
                "note": SHARING_NOTE}
    assert isinstance(bench, SetBench)
    return sharing_summary(job.sharing, chosen.number, chosen.config, chosen.measurement,
                           bench.measure_alone(chosen.config))


def sharing_summary(basis: str, trial: int, config: SetConfig, together: Measurement,
                    alone: dict[str, Measurement | str]) -> dict[str, Any]:
    """The saving of co-location: the set's power on one server against the sum of each model's power alone at its
    rate in the set (both total energy, idle included). Pure."""
    out: dict[str, Any] = {"basis": basis, "trial": trial, "config": config.knobs(), "note": SHARING_NOTE,
                           "energy_source": together.energy_source, "saving_fraction": None}
    together_j = together.total_energy_j if together.total_energy_j is not None else together.energy_j
    rates = {model: m.throughput_per_s.mean for model, m in together.members.items()}
    out["together"] = {
        "inferences_per_s": sum(rates.values()),
        "power_w": together_j / together.duration_s if together_j is not None and together.duration_s else None,
        "inferences_per_j": _spread(together.inferences_per_j) if together.energy_j is not None else None,
        "rates_per_s": rates,
    }
    models: dict[str, Any] = {}
    separate_w: float | None = 0.0
    for model, measured in alone.items():
        if isinstance(measured, str):
            models[model] = {"error": measured}
            separate_w = None
            continue
        joules = measured.total_energy_j if measured.total_energy_j is not None else measured.energy_j
        per_inference = joules / measured.success_count if joules is not None and measured.success_count else None
        models[model] = {
            "inferences_per_s": measured.throughput_per_s.mean, "p99_ms": measured.p99_ms.mean,
            "power_w": joules / measured.duration_s if joules is not None and measured.duration_s else None,
            "joules_per_inference": per_inference, "energy_source": measured.energy_source,
            "inferences_per_j": _spread(measured.inferences_per_j) if measured.energy_j is not None else None,
            "power_at_set_rate_w": per_inference * rates[model] if per_inference is not None and model in rates
            else None,
        }
        if separate_w is not None:
            at_rate = models[model]["power_at_set_rate_w"]
            separate_w = None if at_rate is None else separate_w + at_rate
    out["alone"] = models
    together_w = out["together"]["power_w"]
    if separate_w and together_w is not None:
        out["separate_power_w"] = separate_w
        out["separate_inferences_per_j"] = sum(rates.values()) / separate_w
        out["saving_fraction"] = 1 - together_w / separate_w
    else:
        out["reason"] = ("a model could not be measured alone" if any("error" in m for m in models.values())
                         else "no energy was measured")
    return out


def _spread(spread: Any) -> dict[str, float]:
    return {"mean": spread.mean, "ci95": spread.ci95}
