"""Paired A/B measurements of two configs (or two sets of configs, one per model of a set) -> ratios with 95%
intervals, the gate's verdict, compare.md and compare.json. Pure: the measuring loop (tuner/compare.py) hands its pairs
here."""

from __future__ import annotations

import dataclasses
import difflib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from tuner.errors import EXIT_INCONCLUSIVE, EXIT_REGRESSION
from tuner.objective import Constraints, set_violations, violations
from tuner.results import SCHEMA_VERSION, Measurement, Spread, clean_json, t_quantile_95

PASS, REGRESSION, INCONCLUSIVE = "pass", "regression", "inconclusive"
STATISTICS_METHOD = "paired Student t on the log-ratios of the pairs' means, 95% two-sided"
# The gate's metric first; (Measurement field, words, unit shown, factor from the field's unit to the unit shown).
METRICS = (
    ("energy_per_inference_j", "energy per inference", "mJ", 1000.0),
    ("throughput_per_s", "throughput", "infer/s", 1.0),
    ("p99_ms", "p99 latency", "ms", 1.0),
    ("memory_mb", "memory", "MB", 1.0),
)
FIELD_UNITS = {"energy_per_inference_j": "J", "throughput_per_s": "infer/s", "p99_ms": "ms", "memory_mb": "MB"}
# A broken constraint in words: (flag, quantity, unit, direction), with the quantity from METRICS' fields.
CONSTRAINT_WORDS = {
    "min_throughput": ("--min-throughput", "throughput_per_s", "below"),
    "max_p99_ms": ("--max-p99-ms", "p99_ms", "above"),
    "max_memory_mb": ("--max-memory-mb", "memory_mb", "above"),
    "request_rate": ("--request-rate", "throughput_per_s", "below"),
}
# A set's models have no energy of their own (the server's joules are the set's): each model's figures shown, as
# (Measurement field, words, unit).
MEMBER_METRICS = (("p99_ms", "p99 latency", "ms"), ("throughput_per_s", "throughput", "infer/s"))


@dataclass(frozen=True)
class PairedRatio:
    """Geometric mean of per-pair candidate/baseline ratios (unitless) with its 95% interval over n pairs."""

    ratio: float
    low: float  # nan below 2 pairs
    high: float
    n: int

    @classmethod
    def of(cls, baseline: Sequence[float], candidate: Sequence[float]) -> PairedRatio:
        """exp(mean ± t_{n-1} sd/sqrt(n)) of log(candidate/baseline) per pair; a pair with a value <= 0 or not
        finite is dropped."""
        logs = [math.log(c / b) for b, c in zip(baseline, candidate, strict=True)
                if math.isfinite(b) and math.isfinite(c) and b > 0 and c > 0]
        if not logs:
            return cls(math.nan, math.nan, math.nan, 0)
        mean = statistics.fmean(logs)
        if len(logs) < 2:
            return cls(math.exp(mean), math.nan, math.nan, 1)
        half = t_quantile_95(len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        return cls(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))

    @property
    def has_interval(self) -> bool:
        """True when both ends of the interval are finite (2 pairs or more)."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    def to_dict(self) -> dict[str, Any]:
        """ratio, low, high (candidate/baseline, unitless) and the number of pairs."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedRatio:
        """Inverse of to_dict() (null ends read back as nan)."""
        ratio, low, high = (math.nan if data[k] is None else float(data[k]) for k in ("ratio", "low", "high"))
        return cls(ratio, low, high, int(data["n"]))


@dataclass(frozen=True)
class Pair:
    """One A/B pair measured back to back on one server; candidate_first is the order drawn for it."""

    index: int  # 1-based
    candidate_first: bool
    baseline: Measurement
    candidate: Measurement

    @property
    def order(self) -> str:
        """'AB' (baseline first) or 'BA' (candidate first)."""
        return "BA" if self.candidate_first else "AB"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: index, order and both measurements."""
        return {"index": self.index, "order": self.order, "candidate_first": self.candidate_first,
                "baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pair:
        """Inverse of to_dict()."""
        return cls(int(data["index"]), bool(data["candidate_first"]), Measurement.from_dict(data["baseline"]),
                   Measurement.from_dict(data["candidate"]))


def decide(energy: PairedRatio, max_regression: float) -> str:
    """'regression' when the energy-per-inference interval lies above 1 + max_regression, 'pass' when it lies at or
    below it, else 'inconclusive' (also when there is no interval)."""
    threshold = 1 + max_regression
    if not energy.has_interval:
        return INCONCLUSIVE
    if energy.low > threshold:
        return REGRESSION
    return PASS if energy.high <= threshold else INCONCLUSIVE


def metric_value(measurement: Measurement, name: str) -> float:
    """A Measurement's figure in its field's unit (a Spread's mean); nan when not measured."""
    value = getattr(measurement, name)
    if isinstance(value, Spread):
        value = value.mean
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class SetMember:
    """One model of a compared set (compare --models): its own limits from the set file and both sides' config.pbtxt."""

    model: str
    constraints: Constraints
    baseline_text: str
    candidate_text: str


@dataclass(frozen=True)
class Comparison:
    """A baseline and a candidate config.pbtxt measured in interleaved pairs, and what the gate makes of them."""

    model: str
    baseline_path: str
    candidate_path: str
    baseline_text: str
    candidate_text: str
    pairs: tuple[Pair, ...]
    max_regression: float  # allowed rise of energy per inference, as a fraction (0.05 = 5%)
    inconclusive_passes: bool
    constraints: Constraints
    load: dict[str, Any]  # the load policy's description (LoadSpec.describe(); a set's: each model's)
    stop_reason: str
    # A set (compare --models): each model of it, in the set's order; the pairs are then the set's measurements (all
    # inferences over the server's joules, each model's own figures in `members`) and `constraints` the server's.
    members: tuple[SetMember, ...] = ()

    def values(self, name: str) -> tuple[list[float], list[float]]:
        """(baseline, candidate) per pair of one metric, in its field's unit (nan where not measured)."""
        return ([metric_value(p.baseline, name) for p in self.pairs],
                [metric_value(p.candidate, name) for p in self.pairs])

    def energy(self) -> PairedRatio:
        """The candidate/baseline ratio of energy per inference (n=0 when none was metered)."""
        return PairedRatio.of(*self.values("energy_per_inference_j"))

    def ratios(self) -> dict[str, PairedRatio]:
        """Candidate/baseline ratio per metric (METRICS' fields); a metric no pair measured is left out."""
        found = {name: PairedRatio.of(*self.values(name)) for name, *_ in METRICS}
        return {name: ratio for name, ratio in found.items() if ratio.n}

    def figures(self) -> dict[str, dict[str, Spread]]:
        """Per config ('baseline', 'candidate') and metric: mean ± 95% interval over the pairs, in the field's unit."""
        out: dict[str, dict[str, Spread]] = {"baseline": {}, "candidate": {}}
        for name, *_ in METRICS:
            baseline, candidate = self.values(name)
            out["baseline"][name], out["candidate"][name] = Spread.of(baseline), Spread.of(candidate)
        return out

    def member_values(self, model: str, name: str) -> tuple[list[float], list[float]]:
        """A set: (baseline, candidate) per pair of one model's own metric (nan where that model was not measured)."""
        def of(measurement: Measurement) -> float:
            own = measurement.members.get(model)
            return math.nan if own is None else metric_value(own, name)

        return [of(p.baseline) for p in self.pairs], [of(p.candidate) for p in self.pairs]

    def member_figures(self) -> dict[str, dict[str, dict[str, Spread]]]:
        """A set: per model, config ('baseline', 'candidate') and MEMBER_METRICS: mean ± 95% interval over the pairs."""
        out: dict[str, dict[str, dict[str, Spread]]] = {}
        for member in self.members:
            out[member.model] = {"baseline": {}, "candidate": {}}
            for name, *_ in MEMBER_METRICS:
                baseline, candidate = self.member_values(member.model, name)
                out[member.model]["baseline"][name] = Spread.of(baseline)
                out[member.model]["candidate"][name] = Spread.of(candidate)
        return out

    def member_ratios(self) -> dict[str, dict[str, PairedRatio]]:
        """A set: per model, its candidate/baseline ratio of each of MEMBER_METRICS."""
        return {m.model: {name: PairedRatio.of(*self.member_values(m.model, name)) for name, *_ in MEMBER_METRICS}
                for m in self.members}

    def member_constraints(self) -> dict[str, Constraints]:
        """A set: each model's own limits (empty for one model)."""
        return {m.model: m.constraints for m in self.members}

    def pooled_candidate(self) -> Measurement | None:
        """The candidate's first measurement with throughput, p99 and memory pooled over the pairs (their means); a
        set's models' throughput and p99 pooled alike."""
        if not self.pairs:
            return None
        memory = Spread.of(self.values("memory_mb")[1]).mean
        first = self.pairs[0].candidate
        pooled = dataclasses.replace(
            first,
            throughput_per_s=Spread.of(self.values("throughput_per_s")[1]),
            p99_ms=Spread.of(self.values("p99_ms")[1]),
            memory_mb=memory if math.isfinite(memory) else None)
        if not self.members:
            return pooled
        return dataclasses.replace(pooled, members={
            m.model: dataclasses.replace(first.members[m.model],
                                         throughput_per_s=Spread.of(self.member_values(m.model, "throughput_per_s")[1]),
                                         p99_ms=Spread.of(self.member_values(m.model, "p99_ms")[1]))
            for m in self.members if m.model in first.members})

    def violations(self) -> dict[str, float]:
        """The constraints the candidate breaks on its pooled means, by the fraction it breaks each (> 0); a set's
        models' own limits named MODEL/constraint."""
        pooled = self.pooled_candidate()
        if pooled is None:
            return {}
        found = (set_violations(pooled, self.constraints, self.member_constraints()) if self.members
                 else violations(pooled, self.constraints))
        return {name: value for name, value in found.items() if value > 0}

    @property
    def verdict(self) -> str:
        """'regression' (energy above the threshold, or a constraint broken), 'pass' or 'inconclusive'."""
        if self.violations():
            return REGRESSION
        return decide(self.energy(), self.max_regression)

    @property
    def exit_code(self) -> int:
        """0 pass, EXIT_REGRESSION, EXIT_INCONCLUSIVE (0 with inconclusive_passes)."""
        verdict = self.verdict
        if verdict == REGRESSION:
            return EXIT_REGRESSION
        if verdict == INCONCLUSIVE and not self.inconclusive_passes:
            return EXIT_INCONCLUSIVE
        return 0

    def resolved(self) -> bool:
        """True when the energy interval lies wholly on one side of the threshold (more pairs would not change it)."""
        return decide(self.energy(), self.max_regression) != INCONCLUSIVE

    def config_diff(self) -> list[str]:
        """Unified diff of the baseline's config.pbtxt against the candidate's, labelled with their paths (a set: one
        per model whose configs differ, labelled FOLDER/MODEL/config.pbtxt)."""
        if not self.members:
            return list(difflib.unified_diff(self.baseline_text.splitlines(), self.candidate_text.splitlines(),
                                             fromfile=self.baseline_path, tofile=self.candidate_path, lineterm=""))
        return [line for m in self.members for line in difflib.unified_diff(
            m.baseline_text.splitlines(), m.candidate_text.splitlines(),
            fromfile=str(PurePath(self.baseline_path, m.model, "config.pbtxt")),
            tofile=str(PurePath(self.candidate_path, m.model, "config.pbtxt")), lineterm="")]

    def sources(self, field: str) -> str:
        """The measurements' label for a field (energy_source, memory_source, energy_accounting), as measured."""
        found = sorted({str(getattr(m, field)) for p in self.pairs for m in (p.baseline, p.candidate)})
        return " / ".join(found) or "none (no pairs measured)"

    def order(self) -> str:
        """Each pair's order, e.g. 'AB BA AB' (A the baseline, B the candidate)."""
        return " ".join(p.order for p in self.pairs)

    def to_document(self) -> dict[str, Any]:
        """compare.json's body (strict JSON: nan as null), with the schema version."""
        figures = self.figures()
        document: dict[str, Any] = clean_json({
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "baseline_path": self.baseline_path,
            "candidate_path": self.candidate_path,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "max_regression": self.max_regression,
            "inconclusive_passes": self.inconclusive_passes,
            "ratios": {name: ratio.to_dict() for name, ratio in self.ratios().items()},
            "figures": {config: {name: spread.to_dict() for name, spread in by_metric.items()}
                        for config, by_metric in figures.items()},
            "units": FIELD_UNITS,
            "constraints": self.constraints.to_dict(),
            "violations": self.violations(),
            "pair_count": len(self.pairs),
            "order": self.order(),
            "pairs": [p.to_dict() for p in self.pairs],
            "load": self.load,
            "energy_source": self.sources("energy_source"),
            "energy_accounting": self.sources("energy_accounting"),
            "memory_source": self.sources("memory_source"),
            "statistics": STATISTICS_METHOD,
            "config_diff": self.config_diff(),
            "baseline_config_pbtxt": self.baseline_text,
            "candidate_config_pbtxt": self.candidate_text,
            "stop_reason": self.stop_reason,
        })
        if self.members:
            document.update(clean_json({"models": [m.model for m in self.members],
                                        "members": self.members_document()}))
        return document

    def members_document(self) -> dict[str, Any]:
        """A set: per model its limits, figures and ratios (MEMBER_METRICS, its own unit each) and both configs."""
        figures, ratios = self.member_figures(), self.member_ratios()
        return {m.model: {
            "constraints": m.constraints.to_dict(),
            "figures": {config: {name: spread.to_dict() for name, spread in by_metric.items()}
                        for config, by_metric in figures[m.model].items()},
            "ratios": {name: ratio.to_dict() for name, ratio in ratios[m.model].items() if ratio.n},
            "baseline_config_pbtxt": m.baseline_text,
            "candidate_config_pbtxt": m.candidate_text,
        } for m in self.members}

    @classmethod
    def from_document(cls, data: dict[str, Any]) -> Comparison:
        """Inverse of to_document(): compare.json read back, to render it again without measuring."""
        return cls(
            model=str(data["model"]), baseline_path=str(data["baseline_path"]),
            candidate_path=str(data["candidate_path"]), baseline_text=str(data["baseline_config_pbtxt"]),
            candidate_text=str(data["candidate_config_pbtxt"]),
            pairs=tuple(Pair.from_dict(p) for p in data["pairs"]), max_regression=float(data["max_regression"]),
            inconclusive_passes=bool(data["inconclusive_passes"]), constraints=Constraints(**data["constraints"]),
            load=dict(data["load"]), stop_reason=str(data["stop_reason"]),
            members=tuple(SetMember(str(model), Constraints(**entry["constraints"]),
                                    str(entry["baseline_config_pbtxt"]), str(entry["candidate_config_pbtxt"]))
                          for model, entry in (data.get("members") or {}).items()))


# Rendering compare.md.
