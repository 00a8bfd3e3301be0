"""What the CLI shows: rich tables and markup lines built from results and progress events; never prints."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from tuner import events, paths
from tuner.doctor import Check
from tuner.impact import annual_summary, significant, trial_per_million
from tuner.job import SearchJob, SearchSettings
from tuner.objective import PriceOfSpeed, best_trial, closest_trial, fastest_trial, price_of_speed
from tuner.outputs import savings
from tuner.redact import mask_url, redact
from tuner.results import Measurement, SetConfig, Spread, TrialResult
from tuner.search import SearchOutcome


def fmt_spread(spread: Spread, digits: int = 1, unit: str = "") -> str:
    """'123.4 ± 5.6 unit (95% CI, n=3)': every repeated figure carries its spread."""
    if spread.n == 0:
        return "n/a"
    unit_text = f" {unit}" if unit else ""
    if spread.n < 2:
        return f"{spread.mean:.{digits}f}{unit_text} (n=1, no spread)"
    return f"{spread.mean:.{digits}f} ± {spread.ci95:.{digits}f}{unit_text} (95% CI, n={spread.n})"


def measurement_table(m: Measurement, title: str) -> Table:
    """A rich table of one measurement, every figure with unit and source."""
    table = Table(title=escape(title), show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("source / note")
    engine = f"load generator: {m.load.get('engine', 'builtin')}"
    table.add_row("throughput", fmt_spread(m.throughput_per_s, 1, "infer/s"), engine)
    table.add_row("latency p50 / p95", f"{m.p50_ms:.2f} / {m.p95_ms:.2f} ms",
                  f"all requests in measured windows ({engine})")
    table.add_row("latency p99", fmt_spread(m.p99_ms, 2, "ms"), f"per window ({engine})")
    if m.energy_j is not None:
        domains = ", ".join(f"{k} {v:.1f} J" for k, v in m.energy_domains_j.items())
        table.add_row("energy", f"{m.total_energy_j or m.energy_j:.1f} J over {m.duration_s:.1f} s",
                      f"{m.energy_source} ({domains})")
        if m.idle_power_w is not None:
            table.add_row("idle power", f"{m.idle_power_w:.1f} W", f"{m.energy_source}, server up, no load")
        if m.energy_accounting == "dynamic":
            table.add_row("dynamic energy", f"{m.energy_j:.1f} J", "idle power x time subtracted")
        table.add_row("energy per inference", f"{(m.energy_per_inference_j or 0) * 1000:.3f} mJ", m.energy_source)
        table.add_row("inferences per joule", fmt_spread(m.inferences_per_j, 2, "infer/J"), m.energy_source)
    else:
        table.add_row("energy", "not measured", m.energy_source)
    memory = f"{m.memory_mb:.0f} MB" if m.memory_mb is not None else "not measured"
    table.add_row("server memory (peak)", memory, m.memory_source)
    table.add_row("requests", f"{m.success_count} ok, {m.failure_count} failed", f"{m.failure_rate:.1%} failed")
    table.add_row("stability", "stable" if m.stable else "UNSTABLE", f"{len(m.windows)} final windows")
    for warning in m.warnings:
        table.add_row("[yellow]warning[/]", "", escape(redact(warning)))
    return table


def doctor_table(checks: list[Check]) -> Table:
    """greentune doctor's table: area, what, status, detail and fix of every check."""
    table = Table(title="greentune doctor", header_style="bold")
    for column in ("area", "what", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        status = "[green]available[/]" if check.available else "[yellow]unavailable[/]"
        table.add_row(escape(check.area), escape(check.name), status, escape(redact(check.detail)), escape(check.fix))
    return table


def event_text(event: events.Event) -> str:
    """One status line for a progress event."""
    if isinstance(event, events.WindowMeasured):
        return (f"window {event.index}/{event.max_windows}: {event.throughput_per_s:.1f} infer/s, "
                f"p99 {event.p99_ms:.2f} ms")
    if isinstance(event, events.ModelLoading):
        return f"loading {event.config}"
    if isinstance(event, events.IdleMeasuring):
        return f"measuring idle power for {event.seconds:g} s"
    if isinstance(event, events.EngineStarted):
        return f"load engine: {event.engine}"
    if isinstance(event, events.WarmingUp):
        return f"warming up for {event.seconds:g} s"
    if isinstance(event, events.ConcurrencyProbed):
        return (f"probing concurrency {event.concurrency}: {event.throughput_per_s:.1f} infer/s, "
                f"p99 {event.p99_ms:.2f} ms")
    if isinstance(event, events.TrialStarted):
        return f"trial {event.number}: {event.config}" + (" (baseline)" if event.baseline else "")
    if isinstance(event, events.RepeatStarted):
        return f"repeating trial {event.number}: {event.config}"
    if isinstance(event, events.RepeatFailed):
        return f"repeat of trial {event.number} failed: {event.reason}"
    if isinstance(event, events.ServerRestarted):
        return f"server died; restarted it (restart {event.count})"
    if isinstance(event, events.ImagePulling):
        done = f" {event.current_bytes / 1e6:.0f}/{event.total_bytes / 1e6:.0f} MB" if event.total_bytes else ""
        return f"pulling {event.image}: {event.status} {event.layer}{done}"
    if isinstance(event, events.TrialsRecovered):
        return f"{event.count} trial(s) interrupted by an earlier run will be retried"
    if isinstance(event, events.TrialRetried):
        return f"trial {event.number}: {event.reason}; measuring it once more (a failure of the tool, not the config)"
    if isinstance(event, events.Warned):
        return event.text
    if isinstance(event, events.PairMeasured):
        if math.isnan(event.ratio) or math.isnan(event.low):  # fewer than two pairs
            return f"pair {event.index} ({event.order}) measured"
        return (f"pair {event.index} ({event.order}): candidate/baseline energy per inference {event.ratio:.3f} "
                f"(95% interval {event.low:.3f} to {event.high:.3f})")
    return f"trial {event.result.number} finished"


def status_text(event: events.Event) -> str:
    """event_text made safe for rich: user values escaped, secrets masked."""
    return escape(redact(event_text(event)))


def warning_line(text: str) -> str:
    """A yellow 'warning:' line (user values escaped)."""
    return f"[yellow]warning:[/] {escape(text)}"


def load_text(described: dict[str, Any]) -> str:
    """How load was applied, in words: 'concurrency 8 (builtin)', 'concurrency auto (p99 <= 20 ms)', '50 req/s ...'."""
    if described["mode"] == "set":  # a set of models: each one's own load
        return "; ".join(f"{model} {load_text(load)}" for model, load in described["members"].items())
    engine = f" ({described['engine']})" if described.get("engine") else ""
    if described["mode"] == "auto":
        return f"concurrency auto (p99 <= {described.get('max_p99_ms')} ms){engine}"
    if described["mode"] == "concurrency":
        return f"concurrency {described['concurrency']}{engine}"
    return f"{described['request_rate_per_s']:g} req/s open loop{engine}"


def trial_line(result: TrialResult) -> str:
    """One line per finished trial: status, config, inferences per joule with spread and source, p99, throughput."""
    head = f"trial {result.number:>3} "
    if result.failed:
        status = "[red]failed[/] (load tool, twice)" if result.tool_failure else "[red]failed[/]   "
        return f"{head}{status} {escape(result.config.describe())} · {escape(redact(result.failure_reason or ''))}"
    m = result.measurement
    assert m is not None  # a trial that did not fail was measured
    if result.screened:  # the reason says after how many windows and why, with units
        return (f"{head}[blue]screened[/]   {escape(result.config.describe())} · "
                f"{escape(redact(result.screened_reason or ''))}")
    status = "[green]feasible[/]  " if result.feasible else "[yellow]infeasible[/]"
    return (f"{head}{status} {escape(result.config.describe())} · {fmt_spread(m.inferences_per_j, 2, 'infer/J')} "
            f"[{m.energy_source}] · p99 {m.p99_ms.mean:.2f} ms · {m.throughput_per_s.mean:.0f} infer/s")


def best_text(best: TrialResult | None, objective: str) -> str | None:
    """The best trial so far for the progress bar ('trial 3: 12.34 infer/J (nvml)'), None before one is measured."""
    if best is None or best.measurement is None:
        return None
    if objective == "throughput":
        return f"trial {best.number}: {best.measurement.throughput_per_s.mean:.0f} infer/s"
    return f"trial {best.number}: {best.measurement.inferences_per_j.mean:.2f} infer/J ({best.measurement.energy_source})"


def price_text(price: PriceOfSpeed) -> str:
    """One line: the fastest feasible config against the most efficient one, or that they are the same config."""
    if price.same_config:
        return (f"most efficient and fastest feasible config: the same config (trial {price.efficient_trial}); "
                "speed costs no extra energy here")
    energy = ("energy not metered" if price.extra_energy_per_inference_mj is None else
              f"{price.extra_energy_per_inference_mj:+.3f} mJ per inference, {price.extra_power_w:+.1f} W "
              f"({price.energy_source}, {price.energy_accounting} energy)")
    return (f"price of speed: the fastest feasible config (trial {price.fastest_trial}) runs "
            f"{price.extra_throughput_per_s:+.0f} infer/s vs the most efficient (trial {price.efficient_trial}) "
            f"at {energy}")


def stopped_line(job: SearchJob, outcome: SearchOutcome) -> str:
    """Why the search stopped, how many configs it measured and the load they were measured under."""
    return escape(f"stopped: {outcome.stop_reason}; {len(outcome.results)} configs measured "
                  f"({outcome.duplicates} duplicate proposals reused); load: {load_text(job.load_description())}")


def search_result(job: SearchJob, outcome: SearchOutcome, exported: Path | None) -> list[RenderableType]:
    """What a search with a feasible best shows: the pick, its table, the savings, the price of speed, the impact,
    the files written."""
    best = outcome.best
    assert best is not None and best.measurement is not None  # the caller reports no feasible config instead
    picked = "fastest" if job.objective == "throughput" else "most efficient"
    shown: list[RenderableType] = [
        f"[bold green]best:[/] trial {best.number} ({picked}, --objective {job.objective}): "
        f"{escape(best.config.describe())}",
        measurement_table(best.measurement, f"best config (trial {best.number})")]
    saved = savings(best, outcome.baseline)
    if saved is not None and outcome.baseline is not None:
        tie = " (within the measurement spread: a tie)" if saved["within_spread"] else ""
        own = "every model's own config" if isinstance(best.config, SetConfig) else "the model's own config"
        shown.append(f"vs baseline (trial {outcome.baseline.number}, {own}): "
                     f"{saved['energy_saved_per_inference_j'] * 1000:.3f} mJ per inference saved "
                     f"({saved['energy_saved_percent']:.1f}%, {saved['energy_source']}){tie}; "
                     f"p99 {saved['p99_change_ms']:+.2f} ms; throughput {saved['throughput_change_percent']:+.1f}%")
    price = price_of_speed(best_trial(outcome.results), fastest_trial(outcome.results))
    if price is not None:
        shown.append(price_text(price))
    shown.extend(set_lines(best, outcome.sharing))
    shown.extend(impact_lines(job, outcome))
    html, markdown, _ = paths.report_paths(job.output)
    written: Path | str | None = exported
    if isinstance(best.config, SetConfig) and exported is not None:  # a set: one config.pbtxt per model
        written = ", ".join(str(paths.exported_config_path(exported, model)) for model in best.config.models)
    shown.append(escape(f"wrote {written}, {paths.summary_path(job.output)}, {paths.trials_csv_path(job.output)}, "
                        f"{html}, {markdown}"))
    return shown


def set_lines(best: TrialResult, sharing: dict[str, Any] | None) -> list[str]:
    """A set of models: each model's own figures in the chosen set (the joules are the set's), then what serving
    them on one server saved against each alone."""
    if best.measurement is None or not best.measurement.members:
        return []
    lines = []
    for model, m in best.measurement.members.items():
        held = [k.split("/", 1)[1] for k, v in best.violations.items() if k.startswith(f"{model}/") and v <= 0]
        lines.append(f"  {escape(model)}: {m.throughput_per_s.mean:.0f} infer/s · p99 {m.p99_ms.mean:.2f} ± "
                     f"{m.p99_ms.ci95:.2f} ms · {m.failure_rate:.1%} failed"
                     + (f" · holds {', '.join(held)}" if held else "") + f" ({escape(load_text(m.load))})")
    lines.insert(0, "each model in the chosen set (energy is the set's, not split per model):")
    if sharing is None:
        lines.append("sharing one server: not measured (--sharing off)")
    elif sharing.get("saving_fraction") is None:
        lines.append(f"sharing one server: unknown ({escape(str(sharing.get('reason')))})")
    else:
        lines.append(f"sharing one server saves {sharing['saving_fraction']:.1%} of the power of each model on a "
                     f"server of its own ({sharing['together']['power_w']:.1f} W vs {sharing['separate_power_w']:.1f} W "
                     f"at the same rates, {escape(sharing['energy_source'])}; each model alone with its config of "
                     f"trial {sharing['trial']})")
    return lines


def impact_lines(job: SearchJob, outcome: SearchOutcome) -> list[str]:
    """The annual sentence (with --traffic) or per-million figures of the chosen config, when impact inputs are given."""
    inputs = job.impact
    if not inputs.stated() or outcome.best is None:
        return []
    yearly = annual_summary(outcome.results, outcome.best, outcome.baseline, inputs)
    if yearly is not None and yearly.get("sentence"):
        return [f"[bold]per year:[/] {yearly['sentence']}"]
    figures = trial_per_million(outcome.best, inputs)
    if figures is None:
        return []
    extra = "".join([f", {significant(figures.carbon_g)} g CO2e" if figures.carbon_g is not None else "",
                     f", {significant(figures.energy_cost)} {inputs.currency_label} of energy"
                     if figures.energy_cost is not None else ""])
    return [f"per million inferences (trial {outcome.best.number}): {significant(figures.energy_kwh)} kWh{extra} "
            f"({', '.join(figures.made_from)}); give --traffic for yearly figures"]


def no_feasible_message(job: SearchJob, outcome: SearchOutcome) -> str:
    """Why no config was picked: every trial failed (how many by the load tool), or the closest one and what it broke."""
    closest = closest_trial(outcome.results)
    where = f"; summary in {paths.summary_path(job.output)}"
    if closest is None:
        tool = sum(1 for r in outcome.results if r.tool_failure)
        lost = f"; {tool} of them the load tool's failure, not the config's" if tool else ""
        return f"no config could be measured (all {len(outcome.results)} failed{lost}){where}"
    result, constraint = closest
    return (f"no feasible config among {len(outcome.results)}; closest was trial {result.number} "
            f"({result.config.describe()}), which breaks {constraint} by {result.violations[constraint]:.0%}{where}")


def worker_line(job: SearchJob, settings: SearchSettings, outcome: SearchOutcome, measured_here: list[int]) -> str:
    """What a worker did: why it stopped, how many of the study's configs it measured, the files it wrote."""
    html, markdown, _ = paths.report_paths(job.output)
    return escape(f"stopped: {outcome.stop_reason}; this worker measured {len(measured_here)} of the "
                  f"{len(outcome.results)} configs in study {settings.study} ({mask_url(outcome.storage_url)}); "
                  f"wrote {paths.summary_path(job.output)}, {html}, {markdown}")
