"""Measured energy per inference -> per-million and annual kWh, CO2e and cost at the user's stated traffic. Pure.

Every figure comes from the measurement and inputs the user states (flags or the search space's ``impact:``
block); nothing is guessed or looked up. Without a carbon intensity there is no carbon figure, without a price no
cost, without traffic no annual figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from tuner.errors import BadInput
from tuner.objective import fastest_trial, overlaps
from tuner.results import TrialResult

SECONDS_PER_YEAR = 365 * 24 * 3600  # a 365-day year
HOURS_PER_YEAR = 365 * 24
J_PER_KWH = 3.6e6
MILLION = 1_000_000
TRAFFIC_UNITS_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0, "h": 3600.0,
                   "hour": 3600.0, "day": 86400.0, "d": 86400.0}
# Keys of the search space's impact: block and the flag that overrides each.
IMPACT_KEYS = {"traffic": "--traffic", "carbon_intensity": "--carbon-intensity", "energy_price": "--energy-price",
               "currency": "--currency", "pue": "--pue", "gpu_hourly_price": "--gpu-hourly-price"}
MAX_PUE = 5.0
_CURRENCY = re.compile(r"^[A-Za-z$€£¥₹]{1,8}$")


@dataclass(frozen=True)
class ImpactInputs:
    """What the user stated: traffic (infer/s), grid carbon intensity (gCO2e/kWh), prices, PUE; None = not given."""

    traffic_per_s: float | None = None
    carbon_intensity_g_per_kwh: float | None = None
    energy_price_per_kwh: float | None = None
    currency: str | None = None
    pue: float = 1.0
    machine_price_per_hour: float | None = None
    sources: dict[str, str] = field(default_factory=dict)  # input key -> the flag or file:key it came from

    @property
    def currency_label(self) -> str:
        """The currency's label for printing (the user's own, else a neutral word)."""
        return self.currency or "currency units"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record of the inputs, with units in the keys and where each came from."""
        return {"traffic_per_s": self.traffic_per_s, "carbon_intensity_g_per_kwh": self.carbon_intensity_g_per_kwh,
                "energy_price_per_kwh": self.energy_price_per_kwh, "currency": self.currency, "pue": self.pue,
                "machine_price_per_hour": self.machine_price_per_hour, "sources": dict(self.sources),
                "seconds_per_year": SECONDS_PER_YEAR}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImpactInputs:
        """Inverse of to_dict (for re-rendered reports)."""
        return cls(traffic_per_s=data.get("traffic_per_s"),
                   carbon_intensity_g_per_kwh=data.get("carbon_intensity_g_per_kwh"),
                   energy_price_per_kwh=data.get("energy_price_per_kwh"), currency=data.get("currency"),
                   pue=float(data.get("pue") or 1.0), machine_price_per_hour=data.get("machine_price_per_hour"),
                   sources=dict(data.get("sources") or {}))

    def stated(self) -> bool:
        """True when the user gave any impact input (PUE alone counts)."""
        return bool(self.sources)


def parse_traffic(value: Any, where: str) -> float:
    """'2000', 2000, '2000/s', '1.7e8/day', '500/min', '3e5/h' -> inferences per second (> 0)."""
    if isinstance(value, bool):
        raise BadInput(f"{where}: expected inferences per second or R/day, got {value!r}")
    text = str(value).strip().replace("_", "")
    number_text, _, unit = text.partition("/")
    unit = unit.strip().lower()
    if unit.endswith("s") and unit not in ("s",):
        unit = unit[:-1]  # days, hours, seconds
    units = "s, min, h, day"
    if unit and unit not in TRAFFIC_UNITS_S:
        raise BadInput(f"{where}: unknown unit /{text.partition('/')[2].strip()} in {text!r}; valid: R (per second) "
                       f"or R/{', R/'.join(units.split(', '))}")
    try:
        number = float(number_text)
    except ValueError:
        raise BadInput(f"{where}: expected a number of inferences, e.g. 2000 (per second) or 1.7e8/day, "
                       f"got {text!r}") from None
    if not (number > 0 and math.isfinite(number)):
        raise BadInput(f"{where}: expected traffic above zero, e.g. 2000 or 1.7e8/day, got {text!r}")
    return number / TRAFFIC_UNITS_S[unit or "s"]


def _positive(value: Any, where: str, what: str, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadInput(f"{where}: expected {what}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise BadInput(f"{where}: expected {what}, got {value!r}") from None
    ok = (number >= 0 if allow_zero else number > 0) and math.isfinite(number)
    if not ok:
        raise BadInput(f"{where}: expected {what}, got {value!r}")
    return number


def _pue(value: Any, where: str) -> float:
    number = _positive(value, where, f"a PUE from 1.0 to {MAX_PUE:g} (facility energy / IT energy)")
    if not 1.0 <= number <= MAX_PUE:
        raise BadInput(f"{where}: expected a PUE from 1.0 to {MAX_PUE:g} (facility energy / IT energy), got {value!r}")
    return number


def _currency(value: Any, where: str) -> str:
    text = str(value).strip()
    if not _CURRENCY.match(text):
        raise BadInput(f"{where}: expected a currency label of 1-8 letters or a symbol, e.g. EUR, got {value!r}")
    return text


def resolve_inputs(flags: dict[str, Any], block: Any, source: str) -> ImpactInputs:
    """Impact inputs from the space's impact: block (file `source`) with flags on top; errors name flag or file:key."""
    if block is not None and not isinstance(block, dict):
        raise BadInput(f"{source}: impact: expected a mapping of {', '.join(IMPACT_KEYS)} to values")
    block = block or {}
    for key in block:
        if key not in IMPACT_KEYS:
            raise BadInput(f"{source}: impact.{key}: unknown key; valid: {', '.join(IMPACT_KEYS)}")
    parsers = {
        "traffic": parse_traffic,
        "carbon_intensity": lambda v, w: _positive(v, w, "grams of CO2e per kWh, a number >= 0, e.g. 400"),
        "energy_price": lambda v, w: _positive(v, w, "a price per kWh, a number >= 0, e.g. 0.15"),
        "currency": _currency,
        "pue": _pue,
        "gpu_hourly_price": lambda v, w: _positive(v, w, "a price per machine-hour, a number >= 0, e.g. 2.50"),
    }
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, flag in IMPACT_KEYS.items():
        flag_value = flags.get(key)
        if flag_value is not None:
            values[key], sources[key] = parsers[key](flag_value, flag), flag
        elif block.get(key) is not None:
            where = f"{source}: impact.{key}"
            values[key], sources[key] = parsers[key](block[key], where), where
    if "currency" in values and "energy_price" not in values and "gpu_hourly_price" not in values:
        raise BadInput(f"{sources['currency']}: a currency labels --energy-price or --gpu-hourly-price; give one")
    return ImpactInputs(traffic_per_s=values.get("traffic"), carbon_intensity_g_per_kwh=values.get("carbon_intensity"),
                        energy_price_per_kwh=values.get("energy_price"), currency=values.get("currency"),
                        pue=values.get("pue", 1.0), machine_price_per_hour=values.get("gpu_hourly_price"),
                        sources=sources)


@dataclass(frozen=True)
class PerMillion:
    """One config's cost per million inferences: facility kWh (measured x PUE), g CO2e and energy cost if stated."""

    energy_kwh: float
    carbon_g: float | None
    energy_cost: float | None
    made_from: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, units in the keys."""
        return {"energy_kwh_per_million": self.energy_kwh, "carbon_g_per_million": self.carbon_g,
                "energy_cost_per_million": self.energy_cost, "made_from": list(self.made_from)}


def per_million(energy_per_inference_j: float, inputs: ImpactInputs) -> PerMillion:
    """kWh, g CO2e and energy cost per million inferences from joules per inference."""
    kwh = energy_per_inference_j * MILLION / J_PER_KWH * inputs.pue
    made = ["measured energy per inference", f"PUE {inputs.pue:g}"]
    carbon = cost = None
    if inputs.carbon_intensity_g_per_kwh is not None:
        carbon = kwh * inputs.carbon_intensity_g_per_kwh
        made.append(f"{inputs.carbon_intensity_g_per_kwh:g} gCO2e/kWh")
    if inputs.energy_price_per_kwh is not None:
        cost = kwh * inputs.energy_price_per_kwh
        made.append(f"{inputs.energy_price_per_kwh:g} {inputs.currency_label}/kWh")
    return PerMillion(kwh, carbon, cost, tuple(made))


@dataclass(frozen=True)
class AnnualFigures:
    """One config serving the stated traffic for a year: kWh, kg CO2e, energy cost, machines and their cost."""

    trial: int
    energy_per_inference_j: float
    throughput_per_s: float
    energy_kwh_per_year: float
    carbon_kg_per_year: float | None
    energy_cost_per_year: float | None
    machines: int | None
    machine_cost_per_year: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, units in the keys."""
        return {"trial": self.trial, "energy_per_inference_j": self.energy_per_inference_j,
                "throughput_per_s": self.throughput_per_s, "energy_kwh_per_year": self.energy_kwh_per_year,
                "carbon_kg_per_year": self.carbon_kg_per_year, "energy_cost_per_year": self.energy_cost_per_year,
                "machines": self.machines, "machine_cost_per_year": self.machine_cost_per_year}


def annual(trial: int, energy_per_inference_j: float, throughput_per_s: float, inputs: ImpactInputs) -> AnnualFigures:
    """Energy per inference x traffic x seconds per year x PUE; machines = ceil(traffic / measured throughput)."""
    if inputs.traffic_per_s is None:
        raise ValueError("annual figures need traffic")
    kwh = energy_per_inference_j * inputs.traffic_per_s * SECONDS_PER_YEAR / J_PER_KWH * inputs.pue
    carbon = kwh * inputs.carbon_intensity_g_per_kwh / 1000 if inputs.carbon_intensity_g_per_kwh is not None else None
    cost = kwh * inputs.energy_price_per_kwh if inputs.energy_price_per_kwh is not None else None
    machines = machine_cost = None
    if inputs.machine_price_per_hour is not None and throughput_per_s > 0:
        machines = machines_needed(inputs.traffic_per_s, throughput_per_s)
        machine_cost = machines * inputs.machine_price_per_hour * HOURS_PER_YEAR
    return AnnualFigures(trial, energy_per_inference_j, throughput_per_s, kwh, carbon, cost, machines, machine_cost)


def machines_needed(traffic_per_s: float, throughput_per_s: float) -> int:
    """Machines serving traffic at the measured throughput each, rounded up (a 1e-9 relative slack for float noise)."""
    return max(1, math.ceil(traffic_per_s / throughput_per_s * (1 - 1e-9)))


@dataclass(frozen=True)
class Comparison:
    """The chosen config against the baseline over a year; tie = their 95% intervals overlap (no saving claimed)."""

    chosen: AnnualFigures
    baseline: AnnualFigures
    tie: bool

    @property
    def energy_kwh_saved_per_year(self) -> float:
        """Baseline minus chosen, kWh/year (negative: the chosen uses more)."""
        return self.baseline.energy_kwh_per_year - self.chosen.energy_kwh_per_year

    @property
    def carbon_kg_saved_per_year(self) -> float | None:
        """Baseline minus chosen, kg CO2e/year (None without a carbon intensity)."""
        if self.chosen.carbon_kg_per_year is None or self.baseline.carbon_kg_per_year is None:
            return None
        return self.baseline.carbon_kg_per_year - self.chosen.carbon_kg_per_year

    @property
    def energy_cost_saved_per_year(self) -> float | None:
        """Baseline minus chosen, energy cost/year (None without a price)."""
        if self.chosen.energy_cost_per_year is None or self.baseline.energy_cost_per_year is None:
            return None
        return self.baseline.energy_cost_per_year - self.chosen.energy_cost_per_year

    @property
    def machine_cost_saved_per_year(self) -> float | None:
        """Baseline minus chosen serving-capacity cost/year (None without a machine price)."""
        if self.chosen.machine_cost_per_year is None or self.baseline.machine_cost_per_year is None:
            return None
        return self.baseline.machine_cost_per_year - self.chosen.machine_cost_per_year

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, units in the keys."""
        return {"chosen": self.chosen.to_dict(), "baseline": self.baseline.to_dict(), "tie": self.tie,
                "energy_kwh_saved_per_year": self.energy_kwh_saved_per_year,
                "carbon_kg_saved_per_year": self.carbon_kg_saved_per_year,
                "energy_cost_saved_per_year": self.energy_cost_saved_per_year,
                "machine_cost_saved_per_year": self.machine_cost_saved_per_year}


def significant(value: float, digits: int = 3) -> str:
    """A figure rounded to `digits` significant digits with thousands separators: 1234567 -> '1,230,000'."""
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    rounded = round(value, digits - 1 - magnitude)
    return f"{rounded:,.{decimals}f}"


def traffic_words(traffic_per_s: float) -> str:
    """'2,000 inferences/s (173,000,000 a day)'."""
    return f"{significant(traffic_per_s)} inferences/s ({significant(traffic_per_s * 86400)} a day)"


def sentence(comparison: Comparison, inputs: ImpactInputs) -> str:
    """The one sentence a reviewer asked for: what the chosen config saves a year at the stated traffic."""
    assert inputs.traffic_per_s is not None
    c, b = comparison.chosen, comparison.baseline
    basis = f"at {traffic_words(inputs.traffic_per_s)}, PUE {inputs.pue:g}"
    if c.trial == b.trial:
        return (f"The model's own config (trial {b.trial}) stays: no measured config used less energy per inference; "
                f"{basis} it uses {_year_amounts(c, inputs)} a year.")
    if comparison.tie:
        return (f"Trial {c.trial} and the baseline (trial {b.trial}) are within each other's measurement spread "
                f"(95% intervals overlap): a tie, so no yearly saving is claimed; {basis} either uses about "
                f"{_year_amounts(b, inputs)} a year.")
    saved = comparison.energy_kwh_saved_per_year
    verb = "saves" if saved >= 0 else "costs"
    parts = [f"{significant(abs(saved))} kWh"]
    carbon = comparison.carbon_kg_saved_per_year
    if carbon is not None:
        parts.append(f"{significant(abs(carbon))} kg CO2e (at {inputs.carbon_intensity_g_per_kwh:g} gCO2e/kWh)")
    cost = comparison.energy_cost_saved_per_year
    if cost is not None:
        parts.append(f"{significant(abs(cost))} {inputs.currency_label} of energy "
                     f"(at {inputs.energy_price_per_kwh:g} {inputs.currency_label}/kWh)")
    text = (f"Trial {c.trial} instead of the baseline (trial {b.trial}) {verb} {_join(parts)} a year {basis} "
            f"({significant(b.energy_kwh_per_year)} -> {significant(c.energy_kwh_per_year)} kWh/year).")
    if c.machines is not None and b.machines is not None and comparison.machine_cost_saved_per_year is not None:
        delta = comparison.machine_cost_saved_per_year
        text += (f" Serving it takes {c.machines} machine(s) at the measured {significant(c.throughput_per_s)} infer/s "
                 f"each instead of {b.machines} at {significant(b.throughput_per_s)} infer/s: "
                 f"{significant(abs(delta))} {inputs.currency_label} a year {'less' if delta >= 0 else 'more'} "
                 f"(at {inputs.machine_price_per_hour:g} {inputs.currency_label}/hour).")
    return text


def _year_amounts(figures: AnnualFigures, inputs: ImpactInputs) -> str:
    parts = [f"{significant(figures.energy_kwh_per_year)} kWh"]
    if figures.carbon_kg_per_year is not None:
        parts.append(f"{significant(figures.carbon_kg_per_year)} kg CO2e")
    if figures.energy_cost_per_year is not None:
        parts.append(f"{significant(figures.energy_cost_per_year)} {inputs.currency_label} of energy")
    return _join(parts)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _energy_j(result: TrialResult) -> float | None:
    m = result.measurement
    return m.energy_per_inference_j if m is not None and m.energy_per_inference_j else None


def trial_per_million(result: TrialResult, inputs: ImpactInputs) -> PerMillion | None:
    """Per-million figures of one trial (None when it has no energy per inference)."""
    joules = _energy_j(result)
    return per_million(joules, inputs) if joules is not None else None


def impact_summary(results: list[TrialResult], best: TrialResult | None, baseline: TrialResult | None,
                   inputs: ImpactInputs) -> dict[str, Any]:
    """summary.json's impact block: the inputs, per-million figures of every trial, and the year at the traffic."""
    rows = []
    for r in results:
        figures = trial_per_million(r, inputs)
        rows.append({"trial": r.number, **(figures.to_dict() if figures else
                                          {"energy_kwh_per_million": None, "carbon_g_per_million": None,
                                           "energy_cost_per_million": None, "made_from": []})})
    return {"inputs": inputs.to_dict(), "per_million_inferences": rows,
            "annual": annual_summary(results, best, baseline, inputs),
            "arithmetic": "kWh = J per inference x inferences x PUE / 3.6e6; a year = 365 x 86400 s; kg CO2e = "
                          "kWh x gCO2e/kWh / 1000; cost = kWh x price; machines = ceil(traffic / measured "
                          "throughput)"}


def annual_summary(results: list[TrialResult], best: TrialResult | None, baseline: TrialResult | None,
                   inputs: ImpactInputs) -> dict[str, Any] | None:
    """The chosen, fastest and baseline configs over a year at the stated traffic; None without traffic or data."""
    if inputs.traffic_per_s is None:
        return None
    picks = {"chosen": best, "fastest": fastest_trial(results), "baseline": baseline}
    configs: dict[str, Any] = {}
    for name, result in picks.items():
        joules = _energy_j(result) if result is not None else None
        if result is None or result.measurement is None or joules is None:
            configs[name] = None
            continue
        configs[name] = annual(result.number, joules, result.measurement.throughput_per_s.mean, inputs).to_dict()
    out: dict[str, Any] = {"traffic_per_s": inputs.traffic_per_s, "configs": configs, "chosen_vs_baseline": None,
                           "sentence": None, "made_from": annual_made_from(inputs)}
    if configs["chosen"] is None or configs["baseline"] is None:
        return out
    assert best is not None and baseline is not None and best.measurement and baseline.measurement
    comparison = Comparison(_figures(configs["chosen"]), _figures(configs["baseline"]),
                            tie=best.number != baseline.number and overlaps(best.measurement, baseline.measurement))
    out["chosen_vs_baseline"] = comparison.to_dict()
    out["sentence"] = sentence(comparison, inputs)
    return out


def annual_made_from(inputs: ImpactInputs) -> list[str]:
    """The inputs behind the yearly figures, each with the flag or file:key it came from."""
    def where(key: str) -> str:
        return inputs.sources.get(key, "default")

    made = ["measured energy per inference and throughput of each config",
            f"traffic {inputs.traffic_per_s:g} inferences/s ({where('traffic')})", f"PUE {inputs.pue:g} ({where('pue')})"]
    if inputs.carbon_intensity_g_per_kwh is not None:
        made.append(f"carbon intensity {inputs.carbon_intensity_g_per_kwh:g} gCO2e/kWh ({where('carbon_intensity')})")
    if inputs.energy_price_per_kwh is not None:
        made.append(f"energy price {inputs.energy_price_per_kwh:g} {inputs.currency_label}/kWh ({where('energy_price')})")
    if inputs.machine_price_per_hour is not None:
        made.append(f"machine price {inputs.machine_price_per_hour:g} {inputs.currency_label}/hour "
                    f"({where('gpu_hourly_price')})")
    return made


def _figures(data: dict[str, Any]) -> AnnualFigures:
    return AnnualFigures(**data)
