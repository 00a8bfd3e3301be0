"""compare.md in words: the verdict first, each figure with its interval and unit, the method, the diffs (a set's:
each model's figures and limits). Pure; tuner/comparison.py holds the statistics and the verdict."""

from __future__ import annotations

import math
from typing import Any

from tuner.comparison import (
    CONSTRAINT_WORDS,
    MEMBER_METRICS,
    METRICS,
    PASS,
    REGRESSION,
    STATISTICS_METHOD,
    Comparison,
    PairedRatio,
    metric_value,
)
from tuner.objective import REQUEST_RATE_TOLERANCE, Constraints, asked_rate_per_s
from tuner.results import Spread


def percent(ratio: float) -> str:
    """A ratio as a signed change: 1.123 -> '+12.3%'."""
    return f"{(ratio - 1) * 100:+.1f}%"


def ratio_words(ratio: PairedRatio) -> str:
    """'+12.3% (+9.8% to +14.9%)'; the change alone (with why) when there is no interval."""
    if not ratio.n:
        return "not measured"
    if not ratio.has_interval:
        return f"{percent(ratio.ratio)} (no interval from 1 pair)"
    return f"{percent(ratio.ratio)} ({percent(ratio.low)} to {percent(ratio.high)})"


def number(value: float | None) -> str:
    """About 4 significant digits, no exponent: 1234.5 -> '1234', 0.012345 -> '0.01235'; None -> '?'."""
    if value is None:
        return "?"
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    decimals = min(6, max(0, 3 - math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def given(value: float | None) -> str:
    """A flag's value as the user gave it: 10.0 -> '10'; None -> '?'."""
    return "?" if value is None else f"{value:g}"


def spread_words(spread: Spread, factor: float, unit: str) -> str:
    """'1.234 ± 0.012 mJ' (mean ± 95% interval half-width); the mean alone from 1 pair; 'not measured'."""
    if not spread.n:
        return "not measured"
    mean = number(spread.mean * factor)
    if not math.isfinite(spread.ci95):
        return f"{mean} {unit}"
    decimals = len(mean.partition(".")[2])
    return f"{mean} ± {spread.ci95 * factor:.{decimals}f} {unit}"


def load_words(load: dict[str, Any]) -> str:
    """'closed loop, 4 requests in flight, sent by builtin'; a set's: each model's, e.g. 'each model at its own load:
    mlp closed loop, 4 requests in flight; other open loop at 20 requests/s, sent by builtin'."""
    if load.get("mode") == "set":
        members: dict[str, dict[str, Any]] = load.get("members") or {}
        engines = sorted({str(m["engine"]) for m in members.values() if m.get("engine")})
        each = "; ".join(f"{model} {load_words({k: v for k, v in own.items() if k != 'engine'})}"
                         for model, own in members.items())
        words = f"each model at its own load: {each}"
        return f"{words}, sent by {' / '.join(engines)}" if engines else words
    if load.get("mode") == "request_rate":
        words = f"open loop at {load.get('request_rate_per_s')} requests/s"
    elif load.get("mode") == "concurrency":
        words = f"closed loop, {load.get('concurrency')} requests in flight"
    else:
        words = f"{load.get('mode', 'unknown')} load"
    return f"{words}, sent by {load['engine']}" if load.get("engine") else words


def violation_words(comparison: Comparison, name: str, amount: float) -> str:
    """'--max-p99-ms 10 ms: candidate p99 latency 12.30 ms, 23.0% above' for one broken constraint; a set's model's
    'mlp max_p99_ms 10 ms: candidate p99 latency 12.30 ms, 23.0% above' (its limit from the set file)."""
    pooled = comparison.pooled_candidate()
    model, _, key = name.rpartition("/")
    constraints = comparison.constraints
    if model and pooled is not None:
        pooled, constraints = pooled.members.get(model), comparison.member_constraints().get(model, Constraints())
    if key not in CONSTRAINT_WORDS or pooled is None:
        return f"{name}: broken by {amount:.1%}"
    flag, field, direction = CONSTRAINT_WORDS[key]
    if model:
        flag = f"{model} {key}"
    words, unit = next((w, u) for f, w, u, _ in METRICS if f == field)
    asked = asked_rate_per_s(pooled)
    limit = {"min_throughput": constraints.min_throughput_per_s, "max_p99_ms": constraints.max_p99_ms,
             "max_memory_mb": constraints.max_memory_mb,
             "request_rate": None if asked is None else (1 - REQUEST_RATE_TOLERANCE) * asked}[key]
    where = f"{flag} {given(limit)} {unit}"
    if key == "request_rate":
        where = f"{flag} {given(asked)} requests/s (at least {number(limit)} {unit} must complete)"
    value = metric_value(pooled, field)
    if not math.isfinite(value):
        return f"{where}: candidate {words} not measured, so it cannot be shown to hold"
    return f"{where}: candidate {words} {number(value)} {unit}, {amount:.1%} {direction}"


def headline(comparison: Comparison) -> str:
    """The first line of compare.md: the verdict in capitals and why, in one sentence."""
    verdict, energy = comparison.verdict, comparison.energy()
    threshold = f"{comparison.max_regression * 100:g}% threshold"
    broken = [violation_words(comparison, name, amount) for name, amount in comparison.violations().items()]
    if energy.has_interval:
        change = abs(energy.ratio - 1) * 100
        direction = "about the same" if change < 0.05 else f"{change:.1f}% {'more' if energy.ratio > 1 else 'less'}"
        cost = (f"the candidate costs {direction} energy per inference "
                f"(95% interval {percent(energy.low)} to {percent(energy.high)}, {energy.n} pairs)")
    elif energy.n:
        cost = "energy per inference was measured in 1 pair, too few for an interval (2 needed)"
    else:
        cost = "energy per inference was not measured in any pair (no energy reading)"
    said = f"**greentune compare: {verdict.upper()}** — "
    if comparison.members:
        cost = cost.replace("the candidate costs", "the candidate set costs", 1)
    if verdict == REGRESSION and broken:
        return said + "the candidate breaks " + "; ".join(broken) + f"; {cost}"
    if verdict == REGRESSION:
        return said + f"{cost}, above the {threshold}"
    if verdict == PASS:
        return said + f"{cost}, within the {threshold}"
    passes = " (exit 0: --inconclusive pass)" if comparison.inconclusive_passes else ""
    straddle = f", an interval that straddles the {threshold}" if energy.has_interval else ""
    return (said + f"{cost}{straddle}{passes}; to resolve it, measure more pairs (a larger --budget) or on a quieter "
            "machine")


def render_markdown(comparison: Comparison) -> str:
    """compare.md: headline, table (mean ± 95% interval per config, ratio with its interval), sources, method, diff."""
    ratios, figures = comparison.ratios(), comparison.figures()
    lines = [headline(comparison), "",
             "| quantity | baseline | candidate | candidate / baseline (95% interval) |", "|---|---|---|---|"]
    for name, words, unit, factor in METRICS:
        ratio = ratios.get(name, PairedRatio(math.nan, math.nan, math.nan, 0))
        lines.append(f"| {words} ({unit}) | {spread_words(figures['baseline'][name], factor, unit)} | "
                     f"{spread_words(figures['candidate'][name], factor, unit)} | {ratio_words(ratio)} |")
    if comparison.members:
        lines += member_lines(comparison)
    accounting = {"total": "total energy, idle power included", "dynamic": "dynamic energy, idle power subtracted"}
    energy_mode = " / ".join(accounting.get(mode, f"{mode} energy")
                             for mode in comparison.sources("energy_accounting").split(" / "))
    lines += [
        "",
        f"- energy: {comparison.sources('energy_source')} ({energy_mode})",
        f"- memory: {comparison.sources('memory_source')}",
        f"- load: {load_words(comparison.load)}",
        f"- pairs: {len(comparison.pairs)}, in the order {comparison.order() or '(none)'} "
        "(A the baseline, B the candidate; each pair's order drawn at random)",
        f"- statistics: {STATISTICS_METHOD}; each config's figure is the mean over pairs ± its 95% interval "
        "(Student t)",
        f"- gate: energy per inference{' of the set' if comparison.members else ''} at most "
        f"{comparison.max_regression * 100:g}% above the baseline's"
        + "".join(f"; {flag} {given(value)} {unit}" for flag, value, unit in constraint_flags(comparison.constraints))
        + "".join(f"; {model} {limit}" for model, limit in member_limits(comparison)),
        f"- stopped: {comparison.stop_reason}",
    ]
    lines += [f"- breaks {violation_words(comparison, name, amount)}" for name, amount in
              comparison.violations().items()]
    diff = comparison.config_diff()
    lines += ["", "Config diff (baseline -> candidate):", "", "```diff", *diff, "```"] if diff else [
        "", "The two config.pbtxt files are identical."]
    return "\n".join(lines) + "\n"


def constraint_flags(constraints: Constraints) -> list[tuple[str, float, str]]:
    """The constraint flags that are set: (flag, value, unit)."""
    flags = (("--min-throughput", constraints.min_throughput_per_s, "infer/s"),
             ("--max-p99-ms", constraints.max_p99_ms, "ms"), ("--max-memory-mb", constraints.max_memory_mb, "MB"))
    return [(flag, value, unit) for flag, value, unit in flags if value is not None]


def member_lines(comparison: Comparison) -> list[str]:
    """A set's table of each model's own p99 and throughput, both configs, with the candidate/baseline ratio."""
    figures, ratios = comparison.member_figures(), comparison.member_ratios()
    headers = [f"{words}: {config}" for _, words, _ in MEMBER_METRICS for config in ("baseline", "candidate", "change")]
    lines = ["", "Each model of the set (its own requests over the same windows; the joules are the server's, the "
             "set's alone):", "", "| model | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for member in comparison.members:
        own = figures[member.model]
        cells = [cell for name, _, unit in MEMBER_METRICS
                 for cell in (spread_words(own["baseline"][name], 1.0, unit),
                              spread_words(own["candidate"][name], 1.0, unit), ratio_words(ratios[member.model][name]))]
        lines.append(f"| {member.model} | " + " | ".join(cells) + " |")
    return lines


def member_limits(comparison: Comparison) -> list[tuple[str, str]]:
    """A set's limits of each model, in words: (model, 'max_p99_ms 250 ms'), and each open loop's rate to complete."""
    out = []
    loads: dict[str, dict[str, Any]] = comparison.load.get("members") or {}
    for member in comparison.members:
        limits = member.constraints
        for key, value, unit in (("min_throughput", limits.min_throughput_per_s, "infer/s"),
                                 ("max_p99_ms", limits.max_p99_ms, "ms")):
            if value is not None:
                out.append((member.model, f"{key} {given(value)} {unit}"))
        load = loads.get(member.model, {})
        if load.get("mode") == "request_rate":
            out.append((member.model, f"request_rate {given(load.get('request_rate_per_s'))} requests/s completed "
                                      f"(within {REQUEST_RATE_TOLERANCE:.0%})"))
    return out
