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
from tuner.results import TrialResult


@dataclass
class ReportData:
    """A search's saved results, ready to render."""

    output_dir: Path
    summary: dict[str, Any]
    results: list[TrialResult]
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""

    @property
    def model(self) -> str:
        """The model's name."""
        return str(self.summary.get("model", "model"))

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
        """feasible, infeasible or failed."""
        return "failed" if result.failed else ("feasible" if result.feasible else "infeasible")


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
    if storage is None and (output_dir / "study.db").is_file():
        storage = f"sqlite:///{(output_dir / 'study.db').resolve()}"
    importances, note = _importances(summary, storage)
    return ReportData(output_dir, summary, sorted(results, key=lambda r: r.number), importances, note)


def _importances(summary: dict[str, Any], storage: str | None) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances (fANOVA) over the study's completed trials, if there are enough."""
    study_info = summary.get("study") or {}
    if not study_info.get("name"):
        return {}, "no study recorded"
    if storage is None:
        return {}, "study not read: give greentune report --storage URL (or GREENTUNE_STORAGE)"
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=study_info["name"], storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(complete) < 3:
            return {}, f"needs at least 3 completed trials ({len(complete)} so far)"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna warns about sparse regimes; the note says what this is
            values = optuna.importance.get_param_importances(study)
        return {k: float(v) for k, v in values.items() if math.isfinite(v)}, "Optuna fANOVA importance evaluator"
    except Exception as exc:  # a report must render even when the study cannot be read
        from tuner.redact import redact

        return {}, f"unavailable: {redact(str(exc).splitlines()[0][:120])}"


@dataclass(frozen=True)
class Headline:
    """What a reviewer needs first: the chosen config against the baseline, in words and numbers."""

    title: str
    lines: list[str]
    tie: bool


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
    if best is None or best.measurement is None:
        closest = data.summary.get("closest_infeasible") or {}
        detail = (f" The closest was trial {closest.get('trial')}, which breaks {closest.get('most_violated')}."
                  if closest else "")
        return Headline("No config met the constraints", [f"Nothing was exported.{detail}"], False)
    m = best.measurement
    is_baseline = base is not None and base.number == best.number
    lines = [f"Chosen ({_objective_words(data.objective)}): trial {best.number}: {best.config.describe()}."
             + (f" This is the model's own config: no measured config was "
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
        lines.append(f"Energy: {chosen_e[0]:.3f} mJ per inference ({source}); the baseline was not measured.")
    load = data.summary.get("load") or {}
    lines.append(f"Every config was measured under the same load: {load_words(load)}.")
    yearly = annual_sentence(data.summary)
    if yearly:
        lines.append(f"Per year: {yearly}")
    if is_baseline:
        title = f"{data.model}: keep the model's own config (trial {best.number}); nothing measured beat it"
    elif base is not None and base.measurement is not None and chosen_e is not None and saved >= 0 and tie:
        title = (f"{data.model}: trial {best.number} measured {saved:.3f} mJ per inference ({percent:.1f}%) below "
                 "the baseline, within the spread: a tie")
    elif base is not None and base.measurement is not None and chosen_e is not None and saved >= 0:
        title = f"{data.model}: trial {best.number} saves {saved:.3f} mJ per inference ({percent:.1f}%)"
    elif data.objective == "throughput":
        title = f"{data.model}: trial {best.number} is the fastest feasible config"
    else:
        title = f"{data.model}: trial {best.number} is the most efficient feasible config"
    return Headline(title, lines, tie)


def annual_sentence(summary: dict[str, Any]) -> str | None:
    """The saved yearly comparison at the stated traffic (summary.json impact.annual.sentence), if any."""
    return ((summary.get("impact") or {}).get("annual") or {}).get("sentence")


def _ci(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _pct(value: float, reference: float) -> str:
    return f"{100 * (value / reference - 1):+.1f}%" if reference else "n/a"


def load_words(load: dict[str, Any]) -> str:
    """How the load was applied, in words (and which engine sent the requests)."""
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
        chosen = " (exported)" if r.number == data.best_number else ""
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
