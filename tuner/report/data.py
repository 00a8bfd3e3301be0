"""Everything a report shows, loaded from an output directory: summary, per-trial records, the study."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner import paths
from tuner.errors import BadInput
from tuner.objective import (
    PriceOfSpeed,
    best_trial,
    fastest_trial,
    mean_power_w,
    pareto_front,
    price_of_speed,
    score,
)
from tuner.redact import redact
from tuner.results import UNRECORDED_GROUP, SetConfig, TrialResult, group_by_hardware, hardware_group
from tuner.study import StudyStore, param_importances


@dataclass
class ReportData:
    """A search's saved results, ready to render."""

    output_dir: Path
    summary: dict[str, Any]
    results: list[TrialResult]
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""
    group_label: str = ""  # a hardware group's view (see hardware_views): its GPU model and meters
    chosen_number: int | None = None  # in a group's view: the study's chosen trial (best_number is the group's best)

    @property
    def exported_number(self) -> int | None:
        """The study's chosen (exported) trial, also in a hardware group's view."""
        return self.chosen_number if self.group_label else self.best_number

    def hardware_views(self) -> list[ReportData]:
        """One view per hardware group (GPU model + meters) when the trials span more than one, else []: each
        holds the group's trials, and its best, baseline, savings and impact from summary.json's hardware_groups."""
        groups = group_by_hardware(self.results)
        if len(groups) < 2:
            return []
        stored = {(g.get("gpu_model") or UNRECORDED_GROUP[0], tuple(g.get("meters") or ())): g
                  for g in self.summary.get("hardware_groups") or []}
        return [self._view(group, stored.get(hardware_group(group[0])) or self._fallback(group)) for group in groups]

    def chosen_view(self) -> ReportData:
        """The hardware group holding the chosen trial (the first group when none was chosen); self on one group."""
        views = self.hardware_views()
        return next((v for v in views if self.result(self.best_number) in v.results), views[0] if views else self)

    def _view(self, results: list[TrialResult], entry: dict[str, Any]) -> ReportData:
        sources = sorted({r.measurement.energy_source for r in results if r.measurement})
        summary = {**self.summary, **{k: entry.get(k) for k in ("best", "baseline", "savings_vs_baseline", "picks",
                                                                  "ties_with_best", "impact")},
                   "energy_sources": sources, "hardware_group": entry}
        label = str(entry.get("label") or "hardware not recorded")
        return ReportData(self.output_dir, summary, results, group_label=label, chosen_number=self.best_number)

    def _fallback(self, results: list[TrialResult]) -> dict[str, Any]:
        """A group the summary does not know yet (a trial finished after it was written): its best and baseline."""
        best = best_trial(results, self.objective)
        base = self.result(self.baseline_number)
        own = [r for r in results if base is not None and r.config == base.config]
        hardware = results[0].hardware
        return {"label": hardware.label() if hardware else "hardware not recorded",
                "hosts": sorted({r.hardware.host for r in results if r.hardware and r.hardware.host}),
                "trials": [r.number for r in results], "best": {"trial": best.number} if best else None,
                "baseline": {"trial": own[0].number} if own else None}

    @property
    def model(self) -> str:
        """The model's name."""
        return str(self.summary.get("model", "model"))

    @property
    def set_models(self) -> list[str]:
        """A set's models in order (search --models), from summary.json or the trials' configs; [] for one model."""
        named = [str(model) for model in self.summary.get("models") or {}]
        if named:
            return named
        return next((list(r.config.models) for r in self.results if isinstance(r.config, SetConfig)), [])

    @property
    def best_number(self) -> int | None:
        """The chosen trial's number."""
        best = self.summary.get("best")
        return int(best["trial"]) if best else None

    @property
    def baseline_number(self) -> int | None:
        """The baseline trial's number (the model's own config)."""
        base = self.summary.get("baseline")
        return int(base["trial"]) if base else None

    def result(self, number: int | None) -> TrialResult | None:
        """The trial with this number."""
        return next((r for r in self.results if r.number == number), None)

    def pareto(self) -> list[int]:
        """Pareto-front trial numbers."""
        return pareto_front(self.results)

    def ranked(self) -> list[TrialResult]:
        """Feasible trials, best first."""
        return sorted((r for r in self.results if r.feasible), key=lambda r: -score(r.measurement))

    @property
    def objective(self) -> str:
        """What the search maximised: efficiency (inferences per joule) or throughput (infer/s)."""
        return str(self.summary.get("objective") or "efficiency")

    def status(self, result: TrialResult) -> str:
        """feasible, infeasible, screened or failed."""
        return result.status

    def status_label(self, result: TrialResult) -> str:
        """The status in words: a load tool's failure says so."""
        return "failed (load tool)" if result.tool_failure else result.status


def load_report_data(output_dir: Path, storage: str | None = None) -> ReportData:
    """Read OUTPUT/summary.json and OUTPUT/trials/*.json (and the study, for parameter importance).

    The study is read from `storage` (--storage / GREENTUNE_STORAGE), else OUTPUT/study.db where it exists;
    never from the URL in summary.json, which is recorded with its password masked.
    """
    output_dir = Path(output_dir)
    summary_path = paths.summary_path(output_dir)
    if not summary_path.exists():
        raise BadInput(f"{output_dir}: no {paths.SUMMARY} here; give the --output folder of a greentune search")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise BadInput(f"{summary_path}: not valid JSON ({exc.msg})") from None
    results = []
    for path in paths.trial_record_paths(output_dir):
        try:
            results.append(TrialResult.from_dict(json.loads(path.read_text())["trial"]))
        except (json.JSONDecodeError, KeyError):
            continue  # a record being written right now: the next render will have it
    if storage is None and paths.study_path(output_dir).is_file():
        storage = paths.study_url(output_dir)
    importances, note = _importances(summary, storage)
    return ReportData(output_dir, summary, sorted(results, key=lambda r: r.number), importances, note)


def _importances(summary: dict[str, Any], storage: str | None) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances over the study's completed trials, if it can be read."""
    study_info = summary.get("study") or {}
    if not study_info.get("name"):
        return {}, "no study recorded"
    if storage is None:
        return {}, "study not read: give greentune report --storage URL (or GREENTUNE_STORAGE)"
    try:
        return param_importances(StudyStore.read(storage, study_info["name"]).study)
    except Exception as exc:  # a report must render even when the study cannot be read
        return {}, f"unavailable: {redact(str(exc).splitlines()[0][:120])}"


@dataclass(frozen=True)
class Headline:
    """What a reviewer needs first: the chosen config against the baseline, in words and numbers."""

    title: str
    lines: list[str]
    tie: bool


def stopped_trials(data: ReportData) -> list[tuple[int, str, str, str]]:
    """Trials screened early or failed: (number, config, status in words, why); the reason names the windows."""
    return [(r.number, r.config.describe(), data.status_label(r), r.screened_reason or r.failure_reason or "")
            for r in data.results if r.screened or r.failed]


def stopped_sentence(data: ReportData) -> str | None:
    """How many trials were screened and how many the load tool lost, in words; None when neither."""
    screened = sum(1 for r in data.results if r.screened)
    tool = sum(1 for r in data.results if r.tool_failure)
    parts = []
    if screened:
        parts.append(f"{screened} trial(s) screened: stopped after a few windows as clearly worse than the best "
                     "trial (beyond the measured spread) or clearly over a constraint; their figures cover those "
                     "windows only, and they are never the pick")
    if tool:
        parts.append(f"{tool} trial(s) lost to the load tool failing twice (a failure of the tool, not of the "
                     "config; the sampler was not taught them)")
    return "; ".join(parts) + "." if parts else None


def energy_per_inference_mj(result: TrialResult) -> tuple[float, float, float] | None:
    """(mJ per inference, low, high) from the measurement and its 95% CI of inferences per joule."""
    m = result.measurement
    if m is None or m.energy_per_inference_j is None:
        return None
    low_ipj, high_ipj = m.inferences_per_j.interval()
    point = m.energy_per_inference_j * 1000
    return point, 1000 / high_ipj if high_ipj > 0 else point, 1000 / low_ipj if low_ipj > 0 else math.inf


def headline(data: ReportData) -> Headline:
    """The chosen config and what it saves and costs against the baseline."""
    best, base = data.result(data.best_number), data.result(data.baseline_number)
    source = ", ".join(data.summary.get("energy_sources") or []) or "unknown source"
    models = data.set_models
    opening = [set_sentence(models)] if models else []
    if best is None or best.measurement is None:
        closest = data.summary.get("closest_infeasible") or {}
        detail = (f" The closest was trial {closest.get('trial')}, which breaks {closest.get('most_violated')}."
                  if closest else "")
        return Headline("No config met the constraints", [*opening, f"Nothing was exported.{detail}"], False)
    m = best.measurement
    is_baseline = base is not None and base.number == best.number
    chosen = "Best on this hardware" if data.group_label else "Chosen"
    own = "each model's own config" if models else "the model's own config"
    lines = [*opening, f"{chosen} ({_objective_words(data.objective)}): trial {best.number}: {best.config.describe()}."
             + (f" This is {own}: no measured config was "
                f"{'faster' if data.objective == 'throughput' else 'more efficient'}." if is_baseline else "")]
    tie = False
    chosen_e = energy_per_inference_mj(best)
    if is_baseline and chosen_e is not None:
        lines.append(f"Energy: {chosen_e[0]:.3f} mJ per inference (95% CI {chosen_e[1]:.3f}–{chosen_e[2]:.3f}), "
                     f"{source}; throughput {m.throughput_per_s.mean:.0f} infer/s; p99 {m.p99_ms.mean:.2f} ms.")
    elif base is not None and base.measurement is not None and chosen_e is not None:
        b = base.measurement
        base_e = energy_per_inference_mj(base)
        assert base_e is not None
        saved = base_e[0] - chosen_e[0]
        percent = 100 * saved / base_e[0] if base_e[0] else 0.0
        tie = bool((data.summary.get("savings_vs_baseline") or {}).get("within_spread"))
        verb = "saves" if saved >= 0 else "costs"
        lines.append(
            f"Energy: {chosen_e[0]:.3f} mJ per inference (95% CI {chosen_e[1]:.3f}–{chosen_e[2]:.3f}) vs "
            f"{base_e[0]:.3f} mJ ({base_e[1]:.3f}–{base_e[2]:.3f}) for the baseline: {verb} {abs(saved):.3f} mJ "
            f"per inference ({abs(percent):.1f}% {'less' if saved >= 0 else 'more'}), {source}."
            + (" The two intervals overlap: statistically a tie." if tie else ""))
        lines.append(f"Throughput: {m.throughput_per_s.mean:.0f} ± {_ci(m.throughput_per_s.ci95):.0f} infer/s vs "
                     f"{b.throughput_per_s.mean:.0f} ± {_ci(b.throughput_per_s.ci95):.0f} infer/s "
                     f"({_pct(m.throughput_per_s.mean, b.throughput_per_s.mean)}).")
        lines.append(f"p99 latency: {m.p99_ms.mean:.2f} ± {_ci(m.p99_ms.ci95):.2f} ms vs {b.p99_ms.mean:.2f} ± "
                     f"{_ci(b.p99_ms.ci95):.2f} ms ({m.p99_ms.mean - b.p99_ms.mean:+.2f} ms).")
    elif chosen_e is not None:
        missing = ("the baseline was not measured on this hardware, so no saving is given (joules on other hardware "
                   "do not compare)" if data.group_label else "the baseline was not measured")
        lines.append(f"Energy: {chosen_e[0]:.3f} mJ per inference ({source}); {missing}.")
    load = data.summary.get("load") or {}
    lines.append(f"Every config was measured under the same load: {load_words(load)}.")
    yearly = annual_sentence(data.summary)
    if yearly:
        lines.append(f"Per year: {yearly}")
    who = data.group_label or (f"{data.model} ({len(models)} models on one server)" if models else data.model)
    if is_baseline:
        title = f"{who}: keep {own} (trial {best.number}); nothing measured beat it"
    elif base is not None and base.measurement is not None and chosen_e is not None and saved >= 0 and tie:
        title = (f"{who}: trial {best.number} measured {saved:.3f} mJ per inference ({percent:.1f}%) below "
                 "the baseline, within the spread: a tie")
    elif base is not None and base.measurement is not None and chosen_e is not None and saved >= 0:
        title = f"{who}: trial {best.number} saves {saved:.3f} mJ per inference ({percent:.1f}%)"
    elif data.objective == "throughput":
        title = f"{who}: trial {best.number} is the fastest feasible config"
    else:
        title = f"{who}: trial {best.number} is the most efficient feasible config"
    return Headline(title, lines, tie)


def set_sentence(models: list[str]) -> str:
    """What a set's figures are: every model's inferences over every joule of the one server they share."""
    return (f"A set of {len(models)} models served together on one server ({', '.join(models)}): energy, "
            "inferences per joule, throughput and p99 here are the set's (all models' inferences over all the "
            "server's joules, p99 over every request); the server's joules are not split between models, whose own "
            "latency and throughput are under \"Each model in the chosen set\".")


def hardware_line(data: ReportData) -> str | None:
    """'GPU NVIDIA H100 80GB HBM3, meters nvml (driver 550.54; host gpu-1)': the hardware every trial ran on."""
    known = [r.hardware for r in data.results if r.hardware is not None]
    if not known:
        return None
    drivers = sorted({h.gpu_driver for h in known if h.gpu_driver})
    hosts = sorted({h.host for h in known if h.host})
    host_words = f"host {', '.join(hosts)}" if len(hosts) <= 3 else f"{len(hosts)} hosts"
    extra = ([f"driver {', '.join(drivers)}"] if drivers else []) + ([host_words] if hosts else [])
    return known[0].label() + (f" ({'; '.join(extra)})" if extra else "")


def hardware_headline(data: ReportData, views: list[ReportData]) -> Headline:
    """Trials on more than one hardware group: say they do not compare, and name each group's best."""
    lines = [set_sentence(data.set_models)] if data.set_models else []
    lines += [f"These {len(data.results)} trials were measured on {len(views)} hardware groups (GPU model + meters). "
             "Joules measured on different GPUs or meters do not compare, so each group below has its own best config, "
             "and a saving against the baseline is given only within the group that measured the baseline."]
    for view in views:
        best = view.result(view.best_number)
        e = energy_per_inference_mj(best) if best is not None else None
        saved = view.summary.get("savings_vs_baseline") or {}
        what = (f"best trial {best.number} ({best.config.describe()})" + (f", {e[0]:.3f} mJ per inference" if e else "")
                if best is not None else "no feasible config")
        percent = saved.get("energy_saved_percent")
        if percent is not None:
            what += f", {abs(percent):.1f}% {'less' if percent >= 0 else 'more'} energy per inference than its baseline"
        lines.append(f"{view.group_label}: {len(view.results)} trials, {what}.")
    chosen = data.result(data.best_number)
    if chosen is not None:
        where = next((v.group_label for v in views if chosen in v.results), "")
        lines.append(f"The study's overall pick, trial {chosen.number} on {where}, was chosen across groups; "
                     "prefer the best of the group that matches your serving hardware.")
    return Headline(f"{data.model}: measured on {len(views)} hardware groups that do not compare", lines, False)


def annual_sentence(summary: dict[str, Any]) -> str | None:
    """The saved yearly comparison at the stated traffic (summary.json impact.annual.sentence), if any."""
    return ((summary.get("impact") or {}).get("annual") or {}).get("sentence")


def _ci(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _pct(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.1f}%" if reference else "n/a"


def load_words(load: dict[str, Any]) -> str:
    """How the load was applied, in words (and which engine sent the requests); a set's, each model's."""
    if load.get("mode") == "set":
        return "; ".join(f"{model}: {load_words(own)}" for model, own in (load.get("members") or {}).items())
    engine = load.get("engine")
    words = _mode_words(load)
    return f"{words}, driven by {engine}" if engine else words


def _mode_words(load: dict[str, Any]) -> str:
    mode = load.get("mode")
    if mode == "concurrency":
        return f"closed loop, {load.get('concurrency')} requests in flight"
    if mode == "request_rate":
        return f"open loop at {load.get('request_rate_per_s')} requests/s"
    if mode == "auto":
        return f"per config, the highest concurrency keeping p99 within {load.get('max_p99_ms')} ms"
    return "unknown"


def _objective_words(objective: str) -> str:
    return ("--objective throughput: the fastest feasible config" if objective == "throughput"
            else "--objective efficiency: the most efficient feasible config")


@dataclass(frozen=True)
class Picks:
    """Both picks side by side, whatever the objective: the rows of a two-column table and the price of speed."""

    efficient: TrialResult | None
    fastest: TrialResult | None
    price: PriceOfSpeed | None
    rows: list[tuple[str, str, str]]  # (quantity with unit, most efficient, fastest)
    sentence: str


def picks(data: ReportData) -> Picks:
    """The most efficient and the fastest feasible config, and what the speed costs in energy (source named)."""
    efficient, fastest = best_trial(data.results, "efficiency"), fastest_trial(data.results)
    price = price_of_speed(efficient, fastest)
    if efficient is None or fastest is None or price is None:
        return Picks(efficient, fastest, None, [], "No feasible config, so neither pick exists.")

    def column(r: TrialResult) -> list[str]:
        m = r.measurement
        assert m is not None
        e = energy_per_inference_mj(r)
        watts = mean_power_w(m)
        chosen = " (exported)" if r.number == data.exported_number else ""
        return [f"{r.number}{chosen}", r.config.describe(),
                f"{score(m):.2f} ± {_ci(m.inferences_per_j.ci95):.2f}", f"{e[0]:.3f}" if e else "–",
                f"{m.throughput_per_s.mean:.0f} ± {_ci(m.throughput_per_s.ci95):.0f}", f"{m.p99_ms.mean:.2f}",
                f"{watts:.1f}" if watts is not None else "–",
                f"{m.memory_mb:.0f}" if m.memory_mb is not None else "–", m.energy_source]

    labels = ["trial", "config", "inferences/J (95% CI)", "mJ / inference", "throughput (infer/s, 95% CI)",
              "p99 (ms)", f"mean power (W, {price.energy_accounting} energy)", "memory (MB)", "energy source"]
    rows = list(zip(labels, column(efficient), column(fastest), strict=True))
    if price.same_config:
        sentence = (f"Same config: trial {efficient.number} is both the most efficient and the fastest feasible "
                    "config, so speed costs no extra energy here.")
    elif price.extra_energy_per_inference_mj is None or price.extra_power_w is None:
        sentence = (f"The fastest (trial {fastest.number}) runs {price.extra_throughput_per_s:+.0f} infer/s over the "
                    f"most efficient (trial {efficient.number}); energy was not metered.")
    else:
        sentence = (f"Price of speed: the fastest (trial {fastest.number}) runs {price.extra_throughput_per_s:+.0f} "
                    f"infer/s over the most efficient (trial {efficient.number}) for "
                    f"{price.extra_energy_per_inference_mj:+.3f} mJ per inference and {price.extra_power_w:+.1f} W "
                    f"({price.energy_source}, {price.energy_accounting} energy).")
    return Picks(efficient, fastest, price, rows, sentence)
