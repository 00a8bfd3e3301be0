"""Search-space YAML: schema, validation (errors name file and key), and sampling a TrialConfig from an Optuna trial."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Protocol

import yaml

from tuner.errors import BadInput
from tuner.results import BATCHING_KNOBS, INSTANCE_KINDS, KNOB_SPECS, KNOBS, TrialConfig, normalize_kind

# The condition a knob always carries (from the knob table).
IMPLIED_CONDITION = {spec.name: spec.needs for spec in KNOB_SPECS.values() if spec.needs is not None}
CONSTRAINT_KEYS = ("min_throughput", "max_p99_ms", "max_memory_mb")
TOP_KEYS = ("version", "description", "knobs", "constraints", "impact")
KNOB_KEYS = ("type", "low", "high", "step", "log", "choices", "value", "when")
POW2_LIMIT = KNOB_SPECS["max_batch_size"].high
UNSET = "unset"  # a fraction choice: no preferred batch size (Triton's advice for most models)


class TrialLike(Protocol):
    """The part of optuna.Trial that sampling uses (so FixedTrial works in tests)."""

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class Knob:
    """One knob's range: int (low..high, step; log: the doubling ladder low, 2*low, ... high, sampled as its
    index), pow2 (powers of two, sampled as exponent), fraction (preferred size as a share of max_batch_size),
    bool, choice, fixed."""

    name: str
    type: str
    low: int = 0
    high: int = 0
    step: int = 1
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None
    when: str | None = None

    @property
    def param(self) -> str:
        """The Optuna parameter name (pow2 knobs are sampled as their exponent, log ints as their ladder step)."""
        if self.type == "pow2":
            return f"{self.name}_exp"
        if self.type == "int" and self.log:
            return f"{self.name}_step"
        if self.type == "fraction":
            return f"{self.name}_fraction"
        return self.name

    def ladder(self) -> list[int]:
        """A log int knob's values: low doubling up to high (high itself always included)."""
        out, v = [], self.low
        while v < self.high:
            out.append(v)
            v *= 2
        return [*out, self.high]

    def values(self) -> list[Any]:
        """Every value the sampler can propose for this knob's parameter (for the grid)."""
        if self.type == "int":
            if self.log:
                return list(range(len(self.ladder())))
            return list(range(self.low, self.high + 1, self.step))
        if self.type == "pow2":
            return list(range(int(math.log2(self.low)), int(math.log2(self.high)) + 1))
        if self.type == "bool":
            return [0, 1]
        if self.type in ("choice", "fraction"):
            return list(self.choices)
        return [self.value]


@dataclass(frozen=True)
class Space:
    """A validated search space and the constraints it carries."""

    knobs: tuple[Knob, ...]
    constraints: dict[str, float]
    source: str
    impact: dict[str, Any] = field(default_factory=dict)  # the raw impact: block; tuner.impact validates it

    def for_model(self, batches: bool) -> Space:
        """The space restricted to what this model supports (batching knobs only where it batches)."""
        knobs = tuple(k for k in self.knobs if batches or k.name not in BATCHING_KNOBS)
        return replace(self, knobs=knobs)

    def sample(self, trial: TrialLike) -> TrialConfig:
        """Suggest every active knob from the trial (conditional knobs only when their switch is on)."""
        values: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.when is not None and not values.get(knob.when, False):
                continue
            if knob.type == "int" and knob.log:
                # A discrete ladder: equal steps on a log scale, and configs that dedupe exactly.
                ladder = knob.ladder()
                values[knob.name] = ladder[trial.suggest_int(knob.param, 0, len(ladder) - 1)]
            elif knob.type == "int":
                values[knob.name] = trial.suggest_int(knob.param, knob.low, knob.high, step=knob.step)
            elif knob.type == "pow2":
                exp = trial.suggest_int(knob.param, int(math.log2(knob.low)), int(math.log2(knob.high)))
                values[knob.name] = 1 << exp
            elif knob.type == "bool":
                values[knob.name] = bool(trial.suggest_int(knob.param, 0, 1))
            elif knob.type == "choice":
                values[knob.name] = trial.suggest_categorical(knob.param, list(knob.choices))
            elif knob.type == "fraction":
                fraction = trial.suggest_categorical(knob.param, list(knob.choices))
                values[knob.name] = _FRACTION_UNSET if fraction == UNSET else \
                    max(1, int(values["max_batch_size"] * fraction))
            else:
                values[knob.name] = knob.value
        return self._to_config(values)

    @staticmethod
    def _to_config(values: dict[str, Any]) -> TrialConfig:
        if values.get("max_batch_size") == 1 and values.get("dynamic_batching"):
            # Batches of one request cannot be batched: the batcher would only add a queue delay. Measured
            # (and deduped) as dynamic batching off, so the space never spends a trial on it.
            values["dynamic_batching"] = False
            values.pop("max_queue_delay_microseconds", None)
            values.pop("preferred_batch_size", None)
        preferred = values.pop("preferred_batch_size", None)
        if preferred is _FRACTION_UNSET:
            values["preferred_batch_size"] = ()
        elif preferred is not None:
            # A preferred size above max_batch_size is invalid; the largest valid one is the closest config.
            limit = values.get("max_batch_size")
            values["preferred_batch_size"] = (min(preferred, limit) if limit else preferred,)
        return TrialConfig.from_knobs(values)

    def params_of(self, config: TrialConfig) -> dict[str, Any]:
        """Optuna params that make sample() return config (for seeding the baseline); knobs outside the space are dropped."""
        knobs = config.knobs()
        params: dict[str, Any] = {}
        for knob in self.knobs:
            value = knobs.get(knob.name)
            if value is None or knob.type == "fixed":
                continue
            if knob.type == "int" and knob.log:
                if value not in knob.ladder():
                    continue
                params[knob.param] = knob.ladder().index(value)
            elif knob.type == "fraction":
                fraction = _fraction_of(value, knobs.get("max_batch_size"))
                if fraction in knob.choices:
                    params[knob.param] = fraction
            elif knob.type == "pow2":
                value = value[0] if isinstance(value, list) else value
                if value < 1 or value & (value - 1):
                    continue
                params[knob.param] = int(math.log2(value))
            elif knob.type == "bool":
                params[knob.param] = int(bool(value))
            else:
                params[knob.param] = value
        return params

    def first_params(self, in_flight: int | None, baseline: TrialConfig | None = None) -> list[dict[str, Any]]:
        """Optuna params of the configs worth measuring right after the baseline, before the sampler's random start.

        Dynamic batching on with a max batch of at least the requests in flight (the model's own where it is that
        large, else the smallest such power of two in the space; 32 where the load is not a fixed concurrency), a short queue delay (the ladder's second
        step), preferred sizes unset, at 1 to 3 instances: on a GPU at 32 requests in flight batching is worth 5-7x,
        so these are the configs a 10-trial search cannot afford to leave to chance. Knobs not named here keep the
        baseline's value where the space holds it, else their first value. Empty where the space has no dynamic
        batching or max batch knob (a model that does not batch)."""
        knobs = {k.name: k for k in self.knobs}
        batching, max_batch = knobs.get("dynamic_batching"), knobs.get("max_batch_size")
        if batching is None or batching.type != "bool" or max_batch is None or max_batch.type != "pow2":
            return []
        wanted = in_flight if in_flight is not None else 32
        exponents = max_batch.values()
        own = self.params_of(baseline) if baseline is not None else {}
        exponent = next((e for e in exponents if 1 << e >= wanted), exponents[-1])
        if own.get(max_batch.param) in exponents and 1 << own[max_batch.param] >= wanted:
            exponent = own[max_batch.param]  # the model's own max batch already holds every request in flight
        if 1 << exponent < 2:
            return []  # max batch 1 cannot batch
        common: dict[str, Any] = {}
        for knob in self.knobs:
            if knob.type == "fixed":
                continue
            values = knob.values()
            common[knob.param] = own[knob.param] if own.get(knob.param) in values else values[0]
        common[batching.param] = 1
        common[max_batch.param] = exponent
        delay = knobs.get("max_queue_delay_microseconds")
        if delay is not None and delay.type == "int":
            values = delay.values()
            common[delay.param] = values[min(1, len(values) - 1)] if delay.log else \
                values[min(len(values) - 1, max(0, len(values) // 4))]
        preferred = knobs.get("preferred_batch_size")
        if preferred is not None and preferred.type == "fraction" and UNSET in preferred.choices:
            common[preferred.param] = UNSET
        instances = knobs.get("instance_count")
        counts = [v for v in instances.values() if isinstance(v, int)][:3] if instances is not None and \
            instances.type in ("int", "choice") else [None]
        out: list[dict[str, Any]] = []
        seen = {baseline.key()} if baseline is not None else set()
        for count in counts:
            params = dict(common)
            if count is not None and instances is not None:
                params[instances.param] = count
            config = self.sample(_FixedParams(params))
            if config.key() not in seen:
                seen.add(config.key())
                out.append(params)
        return out

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter and its values, for Optuna's GridSampler."""
        return {knob.param: knob.values() for knob in self.knobs if knob.type != "fixed"}

    def grid_configs(self) -> list[TrialConfig]:
        """Every distinct config the space holds (conditional knobs collapse duplicates)."""
        grid = self.grid()
        seen: dict[str, TrialConfig] = {}
        for combo in itertools.product(*grid.values()):
            params = dict(zip(grid.keys(), combo, strict=True))
            config = self.sample(_FixedParams(params))
            seen.setdefault(config.key(), config)
        return list(seen.values())


_FRACTION_UNSET = object()  # sampled "unset": no preferred batch size


def _fraction_of(preferred: Any, max_batch_size: Any) -> Any:
    """The fraction choice that renders this preferred size with this max batch (UNSET for none; None if no match)."""
    if not preferred:
        return UNSET
    if not isinstance(max_batch_size, int) or len(preferred) != 1 or not max_batch_size:
        return None
    return preferred[0] / max_batch_size


class _FixedParams:
    """A TrialLike that returns given params (like optuna.trial.FixedTrial, without the import)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self.params[name])

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.params[name]


def load_space(path: Path) -> Space:
    """Read and validate a search-space YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadInput(f"{path}: cannot read search space ({exc.strerror})") from None
    return parse_space(parse_yaml(text, str(path)), str(path))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> data; a syntax error is BadInput naming source and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise BadInput(f"{source}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def parse_space(document: Any, source: str) -> Space:
    """Validate a parsed search-space document; every error names source, key and what is valid."""
    if not isinstance(document, dict):
        raise BadInput(f"{source}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    for key in document:
        if key not in TOP_KEYS:
            raise BadInput(f"{source}: unknown key {key!r}; valid: {', '.join(TOP_KEYS)}")
    if document.get("version", 1) != 1:
        raise BadInput(f"{source}: version: expected 1, got {document.get('version')!r}")
    raw_knobs = document.get("knobs")
    if not isinstance(raw_knobs, dict) or not raw_knobs:
        raise BadInput(f"{source}: knobs: expected a mapping of knob names ({', '.join(KNOBS)}) to ranges")
    knobs = []
    for name in KNOBS:  # a fixed order, so conditions are sampled after their switch
        if name in raw_knobs:
            knobs.append(_parse_knob(name, raw_knobs[name], source))
    for name in raw_knobs:
        if name not in KNOBS:
            raise BadInput(f"{source}: knobs.{name}: unknown knob; valid: {', '.join(KNOBS)}")
    by_name = {k.name: k for k in knobs}
    for knob in knobs:
        if knob.when is not None:
            switch = by_name.get(knob.when)
            if switch is None or switch.type not in ("bool", "fixed"):
                raise BadInput(
                    f"{source}: knobs.{knob.name}.when: {knob.when!r} must name a bool knob in this space"
                )
            if switch.type == "fixed" and not switch.value:
                raise BadInput(
                    f"{source}: knobs.{knob.name}.when: {knob.when} is fixed off, so {knob.name} could never apply"
                )
    mbs, pref = by_name.get("max_batch_size"), by_name.get("preferred_batch_size")
    if pref is not None and pref.type == "fraction" and mbs is None:
        raise BadInput(f"{source}: knobs.preferred_batch_size.type: fraction is a share of max_batch_size, "
                       "so max_batch_size must be in the space (a range or a fixed value)")
    if mbs is not None and pref is not None and mbs.type == "pow2" and pref.type == "pow2" and pref.low > mbs.high:
        raise BadInput(
            f"{source}: knobs.preferred_batch_size.low: {pref.low} exceeds max_batch_size.high {mbs.high}; no valid value"
        )
    impact = document.get("impact")
    if impact is not None and not isinstance(impact, dict):
        raise BadInput(f"{source}: impact: expected a mapping, e.g. {{traffic: 2000, carbon_intensity: 400}}")
    return Space(tuple(knobs), _parse_constraints(document.get("constraints"), source), source, dict(impact or {}))


def _parse_constraints(raw: Any, source: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadInput(f"{source}: constraints: expected a mapping of {', '.join(CONSTRAINT_KEYS)} to numbers")
    out = {}
    for key, value in raw.items():
        if key not in CONSTRAINT_KEYS:
            raise BadInput(f"{source}: constraints.{key}: unknown constraint; valid: {', '.join(CONSTRAINT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
            raise BadInput(f"{source}: constraints.{key}: expected a positive number, got {value!r}")
        out[key] = float(value)
    return out


def _parse_knob(name: str, raw: Any, source: str) -> Knob:
    where = f"{source}: knobs.{name}"
    if not isinstance(raw, dict):
        raw = {"value": raw}  # a bare value fixes the knob
    for key in raw:
        if key not in KNOB_KEYS:
            raise BadInput(f"{where}: unknown key {key!r}; valid: {', '.join(KNOB_KEYS)}")
    when = raw.get("when", IMPLIED_CONDITION.get(name))
    if when is not None and not isinstance(when, str):
        raise BadInput(f"{where}.when: expected the name of a bool knob, e.g. dynamic_batching")
    if name in IMPLIED_CONDITION and when != IMPLIED_CONDITION[name]:
        raise BadInput(f"{where}.when: {name} only applies when {IMPLIED_CONDITION[name]} is on; got {when!r}")
    if "value" in raw:
        return Knob(name, "fixed", value=_check_fixed(name, raw["value"], where), when=when)
    natural = KNOB_SPECS[name].space_type
    kind = raw.get("type", natural)
    allowed = {natural, "choice"} if name != "dynamic_batching" else {"bool"}
    if name == "preferred_batch_size":
        allowed.add("fraction")
    if not isinstance(kind, str) or kind not in allowed:
        raise BadInput(f"{where}.type: expected {' or '.join(sorted(allowed))}, got {kind!r}")
    if kind == "bool":
        return Knob(name, "bool", when=when)
    if kind == "fraction":
        return Knob(name, "fraction", choices=_check_fractions(raw.get("choices"), f"{where}.choices"), when=when)
    if kind == "choice":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BadInput(f"{where}.choices: expected a non-empty list")
        checked = tuple(_check_fixed(name, c, f"{where}.choices") for c in choices)
        if len(set(map(str, checked))) != len(checked):
            raise BadInput(f"{where}.choices: has duplicates")
        return Knob(name, "choice", choices=checked, when=when)
    low, high = raw.get("low"), raw.get("high")
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadInput(f"{where}.{key}: expected an integer, got {value!r}")
    assert isinstance(low, int) and isinstance(high, int)
    if low > high:
        raise BadInput(f"{where}: empty range: low {low} > high {high}")
    if kind == "pow2":
        for key, value in (("low", low), ("high", high)):
            if value < 1 or value > POW2_LIMIT or value & (value - 1):
                raise BadInput(f"{where}.{key}: expected a power of two between 1 and {POW2_LIMIT}, got {value}")
        return Knob(name, "pow2", low=low, high=high, when=when)
    step, log = raw.get("step", 1), raw.get("log", False)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise BadInput(f"{where}.step: expected a positive integer, got {step!r}")
    if not isinstance(log, bool):
        raise BadInput(f"{where}.log: expected true or false, got {log!r}")
    if log and (low < 1 or step != 1):
        raise BadInput(f"{where}.log: log scale needs low >= 1 and step 1")
    minimum, maximum = KNOB_SPECS[name].low, KNOB_SPECS[name].high
    if low < minimum or high > maximum:
        raise BadInput(f"{where}: expected values from {minimum} to {maximum}, got {low}..{high}")
    if (high - low) % step:
        raise BadInput(f"{where}.step: (high - low) must be a multiple of step {step}")
    return Knob(name, "int", low=low, high=high, step=step, log=log, when=when)


def _check_fractions(choices: Any, where: str) -> tuple[Any, ...]:
    """Shares of max_batch_size (1, 1/2, 1/4, ...: a power-of-two preferred size of a power-of-two max) or unset."""
    valid = f"expected a non-empty list of {UNSET!r} and fractions of max_batch_size such as 1, 0.5, 0.25"
    if not isinstance(choices, list) or not choices:
        raise BadInput(f"{where}: {valid}")
    out: list[Any] = []
    for choice in choices:
        if choice == UNSET:
            out.append(UNSET)
            continue
        if isinstance(choice, bool) or not isinstance(choice, (int, float)) or not 0 < choice <= 1 or \
                not any(choice == 2.0 ** -k for k in range(17)):
            raise BadInput(f"{where}: {valid}; got {choice!r}")
        out.append(float(choice))
    if len(set(out)) != len(out):
        raise BadInput(f"{where}: has duplicates")
    return tuple(out)


def _check_fixed(name: str, value: Any, where: str) -> Any:
    if name == "instance_kind":
        kind = normalize_kind(value)
        if kind is None:
            raise BadInput(f"{where}: expected one of {', '.join(INSTANCE_KINDS)}, got {value!r}")
        return kind
    if name == "dynamic_batching":
        if not isinstance(value, bool):
            raise BadInput(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < KNOB_SPECS[name].low:
        raise BadInput(f"{where}: expected a positive integer, got {value!r}")
    if KNOB_SPECS[name].space_type == "pow2" and value & (value - 1):
        raise BadInput(f"{where}: expected a power of two, got {value}")
    return value


BUILTIN_PACKAGE = "tuner.spaces"
# The repository's search_spaces/, which setup.py maps into every wheel as tuner.spaces. Read directly when the
# source tree's tuner/ is imported over a non-editable install (python -m tuner in the clone): that tuner/ has no
# spaces subpackage.
SOURCE_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def builtin_spaces_dir() -> Traversable:
    """Where the built-in spaces' YAML files are: the package data tuner.spaces, else the source tree's search_spaces/."""
    try:
        return resources.files(BUILTIN_PACKAGE)
    except ModuleNotFoundError:
        pass
    if SOURCE_SPACES.is_dir():
        return SOURCE_SPACES
    raise BadInput(f"--space: the built-in spaces are missing (no package {BUILTIN_PACKAGE}, no {SOURCE_SPACES}); "
                   "reinstall greentune, or pass a space YAML file")


def builtin_space_names() -> list[str]:
    """Names of the built-in spaces: every YAML file in tuner.spaces (or the source tree's search_spaces/)."""
    return sorted(entry.name[: -len(".yaml")] for entry in builtin_spaces_dir().iterdir()
                  if entry.name.endswith(".yaml"))


def builtin_space(name: str) -> Space | None:
    """The built-in space `name` (--space default|cpu|gpu), read from tuner.spaces/<name>.yaml.

    The YAML files live in the repository's top-level search_spaces/; packaging maps them into the package
    (setup.py), so they are found the same way from a wheel, an sdist build or an editable install, and from
    search_spaces/ itself when the source tree's tuner/ shadows an installed one.
    """
    if name not in builtin_space_names():
        return None
    resource = builtin_spaces_dir().joinpath(f"{name}.yaml")
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInput(f"--space {name}: the built-in space is missing from this install ({exc}); reinstall greentune") from None
    return parse_space(parse_yaml(text, f"{name} (built-in)"), f"{name} (built-in)")


def space_from_name(name: str) -> Space:
    """--space NAME: a built-in space (default, cpu, gpu), else a YAML file."""
    builtin = builtin_space(name) if "/" not in name and not name.endswith((".yaml", ".yml")) else None
    if builtin is not None:
        return builtin
    if Path(name).is_file():
        return load_space(Path(name))
    raise BadInput(f"--space {name}: no such file and not a built-in space ({', '.join(builtin_space_names())})")
