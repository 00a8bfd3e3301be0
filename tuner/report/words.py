"""Provenance in sentences: the saved settings (meters, load, constraints, idle power, study, impact inputs) in words;
a set's models and what sharing one server saves, as table cells in words."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tuner.objective import FAILED_VIOLATION, REQUEST_RATE_TOLERANCE
from tuner.report.data import ReportData, load_words
from tuner.results import Measurement, SetConfig, Spread, TrialResult, hardware_group

METER_NAMES = {"nvml": "NVML (GPU energy counter)", "rapl": "RAPL (CPU package counters)",
               "estimate": "estimated from the server's CPU time", "memory": "server memory"}


def meters_words(meters: dict[str, Any]) -> str:
    """'estimated from the server's CPU time (TDP 20 W for 2 logical cores, from 10 W per logical core, ...)'."""
    if not meters:
        return "not recorded"
    parts = []
    for name, details in meters.items():
        details = details if isinstance(details, dict) else {}
        label = METER_NAMES.get(str(details.get("name", name)), str(details.get("name", name)))
        extra = []
        if details.get("tdp_w") is not None:
            cores = f" for {details['logical_cores']} logical cores" if details.get("logical_cores") else ""
            basis = f", from {details['tdp_basis']}" if details.get("tdp_basis") else ""
            extra.append(f"TDP {details['tdp_w']:g} W{cores}{basis}")
        if details.get("idle_fraction") is not None:
            extra.append(f"idle share {details['idle_fraction']:.0%} of TDP")
        if details.get("cpu_model"):
            extra.append(f"CPU {details['cpu_model']}")
        parts.append(label + (f" ({'; '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def constraints_words(constraints: dict[str, Any]) -> str:
    """'throughput at least 500 infer/s, p99 at most 50 ms; no memory limit'."""
    constraints = constraints or {}
    said, unset = [], []
    for key, text, unit, missing in (("min_throughput_per_s", "throughput at least", "infer/s", "no throughput floor"),
                                     ("max_p99_ms", "p99 latency at most", "ms", "no latency limit"),
                                     ("max_memory_mb", "server memory at most", "MB", "no memory limit")):
        value = constraints.get(key)
        if value is None:
            unset.append(missing)
        else:
            said.append(f"{text} {value:g} {unit}")
    if not said:
        return "none (every config that ran counts as feasible)"
    return ", ".join(said) + ("; " + ", ".join(unset) if unset else "")


def idle_words(summary: dict[str, Any]) -> str:
    """'3.2 W in total (cpu 3.2 W), server up, no load'."""
    total = summary.get("idle_power_total_w")
    if total is None:
        return "not measured"
    domains = summary.get("idle_power_w") or {}
    per = ", ".join(f"{name} {value:.1f} W" for name, value in domains.items())
    accounting = summary.get("energy_accounting")
    use = ("subtracted from every window (dynamic accounting)" if accounting == "dynamic"
           else "included in every figure (total accounting)")
    return f"{total:.1f} W in total{f' ({per})' if per else ''}, server up, no load; {use}"


def study_words(study: dict[str, Any]) -> str:
    """"Optuna study 'x' stored in sqlite:///…"."""
    study = study or {}
    if not study.get("storage"):
        return "not recorded"
    return f"Optuna study '{study.get('name')}' stored in {study.get('storage')}"


def impact_inputs_words(impact: dict[str, Any] | None) -> str:
    """The stated impact inputs and where each came from, or that none were given."""
    inputs = (impact or {}).get("inputs") or {}
    sources = inputs.get("sources") or {}
    if not sources:
        return ("none stated: figures per million inferences are in kWh at PUE 1 only; give --traffic, "
                "--carbon-intensity, --energy-price for yearly, carbon and cost figures")
    currency = inputs.get("currency") or "currency units"
    said = []
    if inputs.get("traffic_per_s") is not None:
        said.append(f"traffic {inputs['traffic_per_s']:,.6g} inferences/s (from {sources.get('traffic')})")
    if inputs.get("carbon_intensity_g_per_kwh") is not None:
        said.append(f"carbon intensity {inputs['carbon_intensity_g_per_kwh']:g} gCO2e/kWh "
                    f"(from {sources.get('carbon_intensity')})")
    if inputs.get("energy_price_per_kwh") is not None:
        said.append(f"energy price {inputs['energy_price_per_kwh']:g} {currency}/kWh (from {sources.get('energy_price')})")
    said.append(f"PUE {inputs.get('pue', 1.0):g} ({'from ' + sources['pue'] if 'pue' in sources else 'default'})")
    if inputs.get("machine_price_per_hour") is not None:
        said.append(f"machine price {inputs['machine_price_per_hour']:g} {currency}/hour "
                    f"(from {sources.get('gpu_hourly_price')})")
    missing = [what for key, what in (("traffic_per_s", "no traffic: no yearly figures"),
                                      ("carbon_intensity_g_per_kwh", "no carbon intensity: no carbon figures"),
                                      ("energy_price_per_kwh", "no energy price: no cost figures"))
               if inputs.get(key) is None]
    return "; ".join(said) + (f". {'; '.join(missing)}." if missing else ".")


def provenance_items(summary: dict[str, Any]) -> dict[str, str]:
    """Label -> sentence for the report's provenance list."""
    env = summary.get("environment") or {}
    gpu = (f"{env['gpu_models']} (driver {env.get('gpu_driver', '?')})" if env.get("gpu_models")
           else "none seen by NVML")
    return {
        "greentune": str(env.get("greentune")), "Triton server": str(env.get("triton_server")),
        "Triton binary / image": str(env.get("triton_binary")),
        "CPU": f"{env.get('cpu_model')} ({env.get('logical_cores')} logical cores)", "GPU / driver": gpu,
        "energy sources": ", ".join(summary.get("energy_sources") or []) or "none",
        "meters": meters_words(summary.get("meters") or {}),
        "idle power": idle_words(summary),
        "energy accounting": str(summary.get("energy_accounting")),
        "load": "every config driven the same way: " + load_words(summary.get("load") or {}),
        "constraints": set_constraints_words(summary) if summary.get("models")
        else constraints_words(summary.get("constraints") or {}),
        "impact inputs": impact_inputs_words(summary.get("impact")),
        "search space": "; ".join(f"{model}: {spec.get('search_space')}" for model, spec in summary["models"].items())
        if summary.get("models") else str(summary.get("search_space")),
        "stop reason": str(summary.get("stop_reason")),
        "date": str(env.get("date")), "command line": str(env.get("command_line")),
        "Python / Optuna / tritonclient": f"{env.get('python')} / {env.get('optuna')} / {env.get('tritonclient')}",
        "OS": str(env.get("os")), "study": study_words(summary.get("study") or {}),
    }


def set_constraints_words(summary: dict[str, Any]) -> str:
    """A set's limits: the server's on the whole set, then each model's on its own figures."""
    server = summary.get("constraints") or {}
    whole = constraints_words(server) if any(v is not None for v in server.values()) else "none"
    models = summary.get("models") or {}
    return f"on the whole set: {whole}; " + "; ".join(
        f"{model}: {constraints_words((spec or {}).get('constraints') or {})}" for model, spec in models.items())


@dataclass(frozen=True)
class Table:
    """A report table as plain-text cells, and the sentences after it: each renderer escapes them its own way."""

    heads: tuple[str, ...]
    rows: list[tuple[str, ...]]
    notes: list[str]


def _spread(spread: Spread, digits: int) -> str:
    half = spread.ci95 if math.isfinite(spread.ci95) else 0.0
    return f"{spread.mean:.{digits}f} ± {half:.{digits}f}"


def _holds(violation: float | None) -> str:
    if violation is None or violation >= FAILED_VIOLATION:
        return "not measured"
    return "holds" if violation <= 0 else f"broken by {violation:.0%}"


def member_limits(constraints: dict[str, Any], violations: dict[str, float], load: dict[str, Any]) -> str:
    """'p99 at most 250 ms: holds; its 40 requests/s completed (within 5%): holds': each limit and whether it held."""
    parts = []
    for name, key, words, unit in (("min_throughput", "min_throughput_per_s", "throughput at least", "infer/s"),
                                   ("max_p99_ms", "max_p99_ms", "p99 at most", "ms"),
                                   ("max_memory_mb", "max_memory_mb", "memory at most", "MB")):
        limit = constraints.get(key)
        if limit is not None:
            parts.append(f"{words} {limit:g} {unit}: {_holds(violations.get(name))}")
    if "request_rate" in violations:
        rate = load.get("request_rate_per_s")
        parts.append(f"its {rate} requests/s completed (within {REQUEST_RATE_TOLERANCE:.0%}): "
                     f"{_holds(violations['request_rate'])}")
    return "; ".join(parts) or "none"


def _member(result: TrialResult | None, model: str) -> Measurement | None:
    return result.measurement.members.get(model) if result is not None and result.measurement is not None else None


def member_table(data: ReportData) -> Table:
    """Each model of the chosen set: its config, load, own figures, limits, and its figures in the baseline set."""
    best, base = data.result(data.best_number), data.result(data.baseline_number)
    specs = data.summary.get("models") or {}
    source = ", ".join(data.summary.get("energy_sources") or []) or "unknown source"
    energy = (f"Energy is the set's: the server's joules ({source}) are measured for all models together and not "
              "split between them, so no model has inferences per joule of its own; each model's figures here are "
              "its own requests, over the same windows as the set's.")
    server = data.summary.get("constraints") or {}
    limits = (f"Limits on the whole set (the server's): {constraints_words(server)}."
              if any(v is not None for v in server.values()) else "")
    if best is None or best.measurement is None:
        return Table((), [], ["No set met every limit, so none was chosen.", energy, *filter(None, [limits])])
    heads = ("model", f"config in the chosen set (trial {best.number})", "load", "throughput (infer/s, 95% CI)",
             "p50 (ms)", "p99 (ms, 95% CI)", "failed requests", "limits", "in the baseline set"
             + (f" (trial {base.number})" if base is not None else ""), "change vs the baseline set")
    rows = []
    for model in data.set_models:
        spec = specs.get(model) or {}
        own, before = _member(best, model), _member(base, model)
        config = (best.config.of(model).describe()
                  if isinstance(best.config, SetConfig) and model in best.config.models else "not recorded")
        load = spec.get("load") or (own.load if own is not None else {})
        violations = {k.split("/", 1)[1]: v for k, v in best.violations.items() if k.startswith(f"{model}/")}
        cells = [model, config, load_words(load) if load else "not recorded"]
        if own is None:
            cells += ["–"] * 4
        else:
            total = own.success_count + own.failure_count
            cells += [_spread(own.throughput_per_s, 1), f"{own.p50_ms:.2f}", _spread(own.p99_ms, 2),
                      f"{own.failure_count} of {total} ({own.failure_rate:.2%})"]
        cells.append(member_limits(spec.get("constraints") or {}, violations, load))
        if base is not None and base.number == best.number:
            cells += ["the chosen set is the baseline", "–"]
        elif base is None or own is None or before is None:
            cells += ["not measured", "–"]
        elif hardware_group(best) != hardware_group(base):
            cells += ["measured on other hardware: does not compare", "–"]
        else:
            change = 100 * (own.throughput_per_s.mean / before.throughput_per_s.mean - 1)
            cells += [f"{_spread(before.throughput_per_s, 1)} infer/s, p99 {_spread(before.p99_ms, 2)} ms",
                      f"throughput {change:+.1f}%, p99 {own.p99_ms.mean - before.p99_ms.mean:+.2f} ms"
                      if before.throughput_per_s.mean else f"p99 {own.p99_ms.mean - before.p99_ms.mean:+.2f} ms"]
        rows.append(tuple(cells))
    return Table(heads, rows, [energy, *filter(None, [limits])])


def _with_source(value: Any, digits: int, source: str) -> str:
    return "–" if value is None else f"{float(value):.{digits}f} ({source})"


def _per_inference_mj(power_w: Any, inferences_per_s: Any, source: str) -> str:
    if power_w is None or not inferences_per_s:
        return "–"
    return f"{1000 * float(power_w) / float(inferences_per_s):.3f} ({source})"


def sharing_table(sharing: dict[str, Any] | None) -> Table:
    """What serving the set on one server saves against a server per model (summary.json sharing), sources named."""
    if sharing is None:
        return Table((), [], ["Sharing was not measured (--sharing off): search with --sharing best (or baseline) "
                              "to measure each model alone and compare."])
    basis, trial = sharing.get("basis"), sharing.get("trial")
    where = f" (trial {trial})" if trial is not None else ""
    basis_words = {"best": f"each model ran alone with its config of the chosen set{where}",
                   "baseline": f"each model ran alone with its own config (the baseline set{where})"}
    notes = [f"Basis: {basis}: {basis_words.get(str(basis), 'not recorded')}."]
    source = str(sharing.get("energy_source") or "unknown source")
    fraction = sharing.get("saving_fraction")
    together = sharing.get("together") or {}
    separate_w = sharing.get("separate_power_w")
    if fraction is not None:
        verb = (f"saves {fraction:.1%} of the power of" if fraction >= 0
                else f"draws {-fraction:.1%} more power than")
        notes.insert(0, f"Serving the set on one server {verb} a server per model: "
                        f"{_plain(together.get('power_w'), 1)} W together against {_plain(separate_w, 1)} W "
                        f"separately at the same rates ({source} energy, idle included).")
    else:
        notes.insert(0, f"Saving: unknown ({sharing.get('reason') or 'reason not recorded'}).")
    alone = sharing.get("alone") or {}
    notes += [f"{model} could not be measured alone: {entry['error']}." for model, entry in alone.items()
              if isinstance(entry, dict) and "error" in entry]
    notes.append(str(sharing.get("note") or ""))
    if not together:
        return Table((), [], [n for n in notes if n])
    heads = ("", "inferences/s", "p99 (ms)", "power (W)", "power at its rate in the set (W)", "inferences/J",
             "mJ / inference")
    rate, power_w = together.get("inferences_per_s"), together.get("power_w")
    count = len(together.get("rates_per_s") or alone)
    rows: list[tuple[str, ...]] = [
        (f"together: all {count} models on one server", _plain(rate, 1), "–", _with_source(power_w, 1, source), "–",
         _ipj(together.get("inferences_per_j"), source), _per_inference_mj(power_w, rate, source)),
        ("separately: a server per model (each alone, at its rate in the set)", _plain(rate, 1), "–",
         _with_source(separate_w, 1, source), "–", _with_source(sharing.get("separate_inferences_per_j"), 2, source),
         _per_inference_mj(separate_w, rate, source)),
    ]
    for model, entry in alone.items():
        entry = entry if isinstance(entry, dict) else {}
        if "error" in entry:
            rows.append((f"{model} alone", "could not be measured", "–", "–", "–", "–", "–"))
            continue
        own = str(entry.get("energy_source") or source)
        per_j = entry.get("joules_per_inference")
        rows.append((f"{model} alone", _plain(entry.get("inferences_per_s"), 1), _plain(entry.get("p99_ms"), 2),
                     _with_source(entry.get("power_w"), 1, own), _with_source(entry.get("power_at_set_rate_w"), 1, own),
                     _ipj(entry.get("inferences_per_j"), own),
                     "–" if per_j is None else f"{1000 * per_j:.3f} ({own})"))
    return Table(heads, rows, [n for n in notes if n])


def _ipj(spread: dict[str, Any] | None, source: str) -> str:
    """'127.74 ± 1.26 (estimated)' from a saved {mean, ci95}."""
    if not spread or spread.get("mean") is None:
        return "–"
    return f"{spread['mean']:.2f} ± {spread.get('ci95') or 0.0:.2f} ({source})"


def _plain(value: Any, digits: int) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"
