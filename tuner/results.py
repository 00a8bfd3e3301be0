"""Frozen values that flow between stages (TrialConfig -> Measurement -> TrialResult), with JSON I/O."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import stat
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.errors import BadInput
from tuner.fileio import atomic_write
from tuner.redact import redact

SCHEMA_VERSION = 1



@functools.lru_cache(maxsize=256)
def t_quantile_95(df: int) -> float:
    """Two-sided 95% Student's t quantile (the 0.975 point) for `df` degrees of freedom, exact to ~1e-12.

    Bisection on the closed form of P(|T| <= t) for integer df (Abramowitz & Stegun 26.7.3/26.7.4, with
    theta = atan(t / sqrt(df))): no table to round and no dependency as large as scipy for one number.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")

    def central(theta: float) -> float:
        cos2, sin = math.cos(theta) ** 2, math.sin(theta)
        if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...)), up to cos^(df-2)
            term, total = math.cos(theta), 0.0
            for j in range(1, df - 1, 2):
                total += term
                term *= (j + 1) / (j + 2) * cos2
            return 2 / math.pi * (theta + sin * total)
        term, total = 1.0, 0.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...), up to cos^(df-2)
        for j in range(0, df - 1, 2):
            total += term
            term *= (j + 1) / (j + 2) * cos2
        return sin * total

    low, high = 0.0, math.pi / 2
    for _ in range(200):
        mid = (low + high) / 2
        if central(mid) < 0.95:
            low = mid
        else:
            high = mid
        if high - low < 1e-15:
            break
    return math.sqrt(df) * math.tan((low + high) / 2)


INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")


@dataclass(frozen=True)
class KnobSpec:
    """One server knob greentune tunes: its search-space type, valid range, and when it applies."""

    name: str
    space_type: str  # the type a search-space YAML gives it by default: int, pow2, bool or choice
    low: int = 0  # smallest valid value (int and pow2 knobs)
    high: int = 0  # largest valid value
    batching: bool = False  # only for models that batch (max_batch_size > 0)
    needs: str | None = None  # only applies while this bool knob is on
    set_hint: str = "an integer"  # what `--set NAME=VALUE` takes

    def in_range(self, value: int) -> bool:
        """True when value lies in [low, high]."""
        return self.low <= value <= self.high


# The knob table, the one place knobs are defined: TrialConfig's fields (same order), the space schema, the
# validator, --set and trials.csv's columns all read it.
KNOB_TABLE = (
    KnobSpec("instance_count", "int", 1, 256),
    KnobSpec("instance_kind", "choice", set_hint="cpu, gpu or auto"),
    KnobSpec("max_batch_size", "pow2", 1, 1 << 16, batching=True),
    KnobSpec("dynamic_batching", "bool", batching=True, set_hint="true or false"),
    KnobSpec("max_queue_delay_microseconds", "int", 0, 10_000_000, batching=True, needs="dynamic_batching"),
    KnobSpec("preferred_batch_size", "pow2", 1, 1 << 16, batching=True, needs="dynamic_batching",
             set_hint="comma-separated integers, e.g. 4,8"),
)
KNOB_SPECS = {spec.name: spec for spec in KNOB_TABLE}
KNOBS = tuple(spec.name for spec in KNOB_TABLE)
BATCHING_KNOBS = tuple(spec.name for spec in KNOB_TABLE if spec.batching)


def normalize_kind(value: object) -> str | None:
    """'cpu', 'KIND_GPU', ... -> the Triton kind name; None when it is not one."""
    kind = str(value).upper()
    kind = kind if kind.startswith("KIND_") else f"KIND_{kind}"
    return kind if kind in INSTANCE_KINDS else None


@dataclass(frozen=True)
class TrialConfig:
    """Server knobs for one trial; None means "keep the model's own value"."""

    instance_count: int | None = None
    instance_kind: str | None = None
    max_batch_size: int | None = None
    dynamic_batching: bool | None = None
    max_queue_delay_microseconds: int | None = None
    preferred_batch_size: tuple[int, ...] | None = None

    def knobs(self) -> dict[str, Any]:
        """The knobs that are set, as plain JSON-able values."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def key(self) -> str:
        """A canonical string identifying this config (for dedupe)."""
        return json.dumps(self.knobs(), sort_keys=True)

    def describe(self) -> str:
        """A short human-readable form, e.g. 'instance_count=2 dynamic_batching=on'."""
        parts = []
        for name, value in self.knobs().items():
            if isinstance(value, bool):
                value = "on" if value else "off"
            elif isinstance(value, list):
                value = ",".join(str(v) for v in value) or "unset"
            parts.append(f"{name}={value}")
        return " ".join(parts) or "(model's own config)"

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> TrialConfig:
        """Build from a knob dict (the inverse of knobs())."""
        values = dict(knobs)
        if values.get("preferred_batch_size") is not None:
            values["preferred_batch_size"] = tuple(int(v) for v in values["preferred_batch_size"])
        return cls(**values)


@dataclass(frozen=True)
class SetConfig:
    """One config per model of a set tuned together (`search --models`): a TrialConfig each, in the set's order.
    It answers what the loop asks of a TrialConfig (knobs, key, describe); its knobs nest one dict per model."""

    members: tuple[tuple[str, TrialConfig], ...]

    def of(self, model: str) -> TrialConfig:
        """The config of one model of the set."""
        return dict(self.members)[model]

    @property
    def models(self) -> tuple[str, ...]:
        """The set's models, in order."""
        return tuple(model for model, _ in self.members)

    def knobs(self) -> dict[str, Any]:
        """{model: that model's knobs} (a TrialConfig's knobs never hold a dict, so the two never read alike)."""
        return {model: config.knobs() for model, config in self.members}

    def key(self) -> str:
        """A canonical string identifying the set's configs (for dedupe)."""
        return json.dumps(self.knobs(), sort_keys=True)

    def describe(self) -> str:
        """'mlp: instance_count=2 ...; other: ...'."""
        return "; ".join(f"{model}: {config.describe()}" for model, config in self.members)

    @classmethod
    def from_knobs(cls, knobs: dict[str, Any]) -> SetConfig:
        """Inverse of knobs()."""
        return cls(tuple((model, TrialConfig.from_knobs(values)) for model, values in knobs.items()))


def config_from_knobs(knobs: dict[str, Any]) -> TrialConfig | SetConfig:
    """A recorded config: a set's when its knobs nest one dict per model, else one model's."""
    if knobs and all(isinstance(v, dict) for v in knobs.values()):
        return SetConfig.from_knobs(knobs)
    return TrialConfig.from_knobs(knobs)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and count of repeated measurements of one quantity."""

    mean: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        """Spread of a list of finite values (sd is 0 for a single value, nan for none)."""
        finite = [v for v in values if v is not None and math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
        return cls(statistics.fmean(finite), sd, len(finite))

    @property
    def ci95(self) -> float:
        """Half-width of the 95% confidence interval of the mean (Student's t; nan below 2 values)."""
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        t = t_quantile_95(self.n - 1)
        return t * self.sd / math.sqrt(self.n)

    def interval(self) -> tuple[float, float]:
        """(low, high) of the 95% confidence interval; the mean alone when it cannot be computed."""
        half = self.ci95
        half = 0.0 if not math.isfinite(half) else half
        return self.mean - half, self.mean + half

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Spread:
        """Inverse of to_dict()."""
        return cls(float(data["mean"]) if data["mean"] is not None else math.nan,
                   float(data["sd"]) if data["sd"] is not None else math.nan, int(data["n"]))

    def to_dict(self) -> dict[str, Any]:
        """mean, sd, n and the 95% CI half-width."""
        return {"mean": self.mean, "sd": self.sd, "n": self.n, "ci95": self.ci95}


@dataclass(frozen=True)
class Window:
    """One measurement window: load and meter readings over the same span."""

    duration_s: float
    success_count: int
    failure_count: int
    throughput_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    energy_j: float | None
    memory_mb: float | None


@dataclass(frozen=True)
class Measurement:
    """What one trial measured over its final (stable) windows, with units and sources."""

    config: TrialConfig | SetConfig
    load: dict[str, Any]
    throughput_per_s: Spread
    p50_ms: float
    p95_ms: float
    p99_ms: Spread
    energy_j: float | None
    energy_source: str
    energy_domains_j: dict[str, float]
    inferences_per_j: Spread
    memory_mb: float | None
    memory_source: str
    success_count: int
    failure_count: int
    duration_s: float
    stable: bool
    windows: tuple[Window, ...] = ()
    error_samples: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    idle_power_w: float | None = None
    energy_accounting: str = "total"
    repeats: int = 1
    total_energy_j: float | None = None  # before idle is subtracted (equals energy_j with 'total' accounting)
    energy_details: dict[str, Any] = field(default_factory=dict)  # per meter: method, TDP basis, cross-checks
    screened_reason: str | None = None  # stopped early (clearly worse, or clearly breaking a constraint): why
    # A set of models (search --models): each model's own figures over the same windows (no energy: the server's
    # joules belong to the set, not to one of its models); empty for one model.
    members: dict[str, Measurement] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        """Failed requests / all requests over the measured windows."""
        total = self.success_count + self.failure_count
        return self.failure_count / total if total else 0.0

    @property
    def energy_per_inference_j(self) -> float | None:
        """Joules per successful inference."""
        if self.energy_j is None or not self.success_count:
            return None
        return self.energy_j / self.success_count

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        data = dataclasses.asdict(self)
        data["config"] = self.config.knobs()
        for name in ("throughput_per_s", "p99_ms", "inferences_per_j"):
            data[name] = getattr(self, name).to_dict()
        data["members"] = {model: m.to_dict() for model, m in self.members.items()}
        data["failure_rate"] = self.failure_rate
        data["energy_per_inference_j"] = self.energy_per_inference_j
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of to_dict()."""
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["config"] = config_from_knobs(data["config"])
        values["members"] = {model: Measurement.from_dict(m) for model, m in (data.get("members") or {}).items()}
        for name in ("throughput_per_s", "p99_ms", "inferences_per_j"):
            values[name] = Spread.from_dict(data[name])
        values["windows"] = tuple(Window(**w) for w in data.get("windows", ()))
        values["error_samples"] = tuple(data.get("error_samples", ()))
        values["warnings"] = tuple(data.get("warnings", ()))
        return cls(**values)


@dataclass(frozen=True)
class Hardware:
    """What a trial was measured on: host, CPU model, GPU model and driver (NVML) and the meters in use."""

    host: str | None = None
    cpu_model: str | None = None
    gpu_model: str = "none"
    gpu_driver: str | None = None
    meters: tuple[str, ...] = ()

    @property
    def group(self) -> tuple[str, tuple[str, ...]]:
        """(GPU model, meters): results whose groups differ do not compare (other joules, other counters)."""
        return self.gpu_model, self.meters

    def label(self) -> str:
        """'GPU NVIDIA H100 80GB HBM3, meters nvml' (the group, in words)."""
        gpu = "no GPU" if self.gpu_model == "none" else f"GPU {self.gpu_model}"
        return f"{gpu}, meters {', '.join(self.meters) or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the `hardware` trial attribute of a shared study)."""
        return {**dataclasses.asdict(self), "meters": list(self.meters)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hardware:
        """Inverse of to_dict(); unknown keys are ignored."""
        return cls(host=data.get("host"), cpu_model=data.get("cpu_model"),
                   gpu_model=str(data.get("gpu_model") or "none"), gpu_driver=data.get("gpu_driver"),
                   meters=tuple(str(m) for m in data.get("meters") or ()))


UNRECORDED_GROUP = ("not recorded", ())  # results written before greentune recorded hardware


def hardware_group(result: TrialResult) -> tuple[str, tuple[str, ...]]:
    """The result's hardware group: (GPU model, meters), or UNRECORDED_GROUP for an older record."""
    return result.hardware.group if result.hardware is not None else UNRECORDED_GROUP


def group_by_hardware(results: list[TrialResult]) -> list[list[TrialResult]]:
    """Results split by hardware group (GPU model + meters), in order of each group's first trial."""
    groups: dict[tuple[str, tuple[str, ...]], list[TrialResult]] = {}
    for result in sorted(results, key=lambda r: r.number):
        groups.setdefault(hardware_group(result), []).append(result)
    return list(groups.values())


FAILURE_KINDS = ("config", "tool")  # a failed trial: the config's fault (refused, failing requests) or the load tool's


@dataclass(frozen=True)
class TrialResult:
    """A trial's outcome: its measurement (partial when screened), or why it failed and whose failure it was."""

    number: int
    config: TrialConfig | SetConfig
    measurement: Measurement | None
    failure_reason: str | None = None
    violations: dict[str, float] = field(default_factory=dict)
    hardware: Hardware | None = None  # None: recorded before greentune kept it
    failure_kind: str | None = None  # failed trials: "config" (the default) or "tool"; None when not failed

    def __post_init__(self) -> None:
        if self.failure_kind is not None and self.failure_kind not in FAILURE_KINDS:
            raise ValueError(f"failure_kind: expected one of {', '.join(FAILURE_KINDS)}, got {self.failure_kind!r}")
        # Records from before failure_kind: every failure was told to the sampler as the config's.
        object.__setattr__(self, "failure_kind", (self.failure_kind or "config") if self.failed else None)

    @property
    def failed(self) -> bool:
        """True when nothing usable was measured."""
        return self.measurement is None or self.failure_reason is not None

    @property
    def tool_failure(self) -> bool:
        """True when the load tool failed (twice): nothing is known about the config."""
        return self.failure_kind == "tool"

    @property
    def screened_reason(self) -> str | None:
        """Why the measurement was stopped early (None when it ran to the end, or failed)."""
        return None if self.failed or self.measurement is None else self.measurement.screened_reason

    @property
    def screened(self) -> bool:
        """True when stopped early as clearly worse or clearly infeasible: never the pick."""
        return self.screened_reason is not None

    @property
    def status(self) -> str:
        """feasible, infeasible, screened or failed (failure_kind says whose failure)."""
        if self.failed:
            return "failed"
        if self.screened:
            return "screened"
        return "feasible" if self.feasible else "infeasible"

    @property
    def feasible(self) -> bool:
        """True when fully measured (not screened) and every constraint holds (violation <= 0)."""
        return not self.failed and not self.screened and all(v <= 0 for v in self.violations.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "number": self.number,
            "config": self.config.knobs(),
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "failure_reason": redact(self.failure_reason) if self.failure_reason else self.failure_reason,
            "failure_kind": self.failure_kind,
            "violations": dict(self.violations),
            "feasible": self.feasible,
            "screened_reason": self.screened_reason,
            "hardware": self.hardware.to_dict() if self.hardware is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        """Inverse of to_dict()."""
        m = data.get("measurement")
        return cls(
            number=int(data["number"]),
            config=config_from_knobs(data["config"]),
            measurement=Measurement.from_dict(m) if m else None,
            failure_reason=data.get("failure_reason"),
            violations=dict(data.get("violations", {})),
            hardware=Hardware.from_dict(data["hardware"]) if data.get("hardware") else None,
            failure_kind=data.get("failure_kind"),
        )


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a JSON document atomically (unique temp file, fsync, rename), with the schema version."""
    body = {"schema_version": SCHEMA_VERSION, **document}
    atomic_write(path, json.dumps(clean_json(body), indent=2, allow_nan=False) + "\n")


def clean_json(value: Any) -> Any:
    """Make a value strict-JSON-able: NaN/inf become null, tuples lists, paths strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def ensure_writable_dir(path: Path, flag: str = "--output") -> Path:
    """Create the folder if needed and prove a file can be written there; BadInput naming the flag if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".greentune-write-check-"):
            pass
    except OSError as exc:
        raise BadInput(f"{flag} {path}: not a writable folder ({exc.strerror or exc}); "
                       "give a folder greentune can create and write") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"{flag} {path}: not writable; give a folder greentune can write")
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        # Anyone could swap summary.json, the study or the exported config.pbtxt under a running search.
        raise BadInput(f"{flag} {path}: writable by every user (mode {stat.S_IMODE(mode):o}, no sticky bit); "
                       f"give a folder only you can write, or run: chmod o-w {path}")
    return path
