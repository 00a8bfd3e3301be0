"""Frozen values that flow between stages (TrialConfig -> Measurement -> TrialResult), with JSON I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.redact import redact

SCHEMA_VERSION = 1

# Two-sided 95% Student's t quantiles by degrees of freedom (above 30: 1.96).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
for _df in range(11, 31):
    T95.setdefault(_df, T95[max(k for k in T95 if k <= _df)])

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
# The server knobs greentune tunes (TrialConfig's fields), and those that only apply to batching models.
KNOBS = (
    "instance_count",
    "instance_kind",
    "max_batch_size",
    "dynamic_batching",
    "max_queue_delay_microseconds",
    "preferred_batch_size",
)
BATCHING_KNOBS = ("max_batch_size", "dynamic_batching", "max_queue_delay_microseconds", "preferred_batch_size")


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
                value = ",".join(str(v) for v in value)
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

    def relative_sd(self) -> float:
        """sd / mean (0 when the mean is 0)."""
        return self.sd / self.mean if self.mean else 0.0

    @property
    def ci95(self) -> float:
        """Half-width of the 95% confidence interval of the mean (Student's t; nan below 2 values)."""
        if self.n < 2 or not math.isfinite(self.sd):
            return math.nan
        t = T95.get(self.n - 1, 1.96)
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

    config: TrialConfig
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
        data["failure_rate"] = self.failure_rate
        data["energy_per_inference_j"] = self.energy_per_inference_j
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Inverse of to_dict()."""
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        values["config"] = TrialConfig.from_knobs(data["config"])
        for name in ("throughput_per_s", "p99_ms", "inferences_per_j"):
            values[name] = Spread.from_dict(data[name])
        values["windows"] = tuple(Window(**w) for w in data.get("windows", ()))
        values["error_samples"] = tuple(data.get("error_samples", ()))
        values["warnings"] = tuple(data.get("warnings", ()))
        return cls(**values)


@dataclass(frozen=True)
class TrialResult:
    """A trial's outcome: its measurement, or why it failed."""

    number: int
    config: TrialConfig
    measurement: Measurement | None
    failure_reason: str | None = None
    violations: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """True when nothing usable was measured."""
        return self.measurement is None or self.failure_reason is not None

    @property
    def feasible(self) -> bool:
        """True when measured and every constraint holds (violation <= 0)."""
        return not self.failed and all(v <= 0 for v in self.violations.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "number": self.number,
            "config": self.config.knobs(),
            "measurement": self.measurement.to_dict() if self.measurement else None,
            "failure_reason": redact(self.failure_reason) if self.failure_reason else self.failure_reason,
            "violations": dict(self.violations),
            "feasible": self.feasible,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        """Inverse of to_dict()."""
        m = data.get("measurement")
        return cls(
            number=int(data["number"]),
            config=TrialConfig.from_knobs(data["config"]),
            measurement=Measurement.from_dict(m) if m else None,
            failure_reason=data.get("failure_reason"),
            violations=dict(data.get("violations", {})),
        )


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a JSON document atomically (unique temp file, fsync, rename), with the schema version."""
    from tuner.fileio import atomic_write

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
    import os
    import tempfile

    from tuner.errors import BadInput

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
    import stat

    mode = path.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        # Anyone could swap summary.json, the study or the exported config.pbtxt under a running search.
        raise BadInput(f"{flag} {path}: writable by every user (mode {stat.S_IMODE(mode):o}, no sticky bit); "
                       f"give a folder only you can write, or run: chmod o-w {path}")
    return path
