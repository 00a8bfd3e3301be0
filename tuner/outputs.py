"""Machine-readable outputs for pipelines: summary.json (versioned) and trials.csv (pandas), rewritten after each trial."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tuner import paths
from tuner.errors import StorageError
from tuner.fileio import atomic_path
from tuner.impact import ImpactInputs, annual_summary, impact_summary, trial_per_million
from tuner.job import SearchJob
from tuner.model_config import ModelConfig, to_text
from tuner.modelset import SetJob
from tuner.objective import (
    OBJECTIVES,
    best_trial,
    closest_trial,
    fastest_trial,
    overlaps,
    pareto_front,
    price_of_speed,
    score,
    ties_with,
)
from tuner.pruning import SINGLE_WINDOW_SDS
from tuner.redact import mask_url, redact
from tuner.results import KNOBS, SetConfig, TrialResult, group_by_hardware, hardware_group, write_json
from tuner.screening import P99_FAR_FACTOR
from tuner.search import SearchOutcome


def _brief(result: TrialResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"trial": result.number, "config": result.config.knobs(),
            "measurement": result.measurement.to_dict() if result.measurement else None,
            "failure_reason": result.failure_reason, "failure_kind": result.failure_kind,
            "screened_reason": result.screened_reason, "violations": result.violations, "feasible": result.feasible}


def savings(best: TrialResult | None, baseline: TrialResult | None) -> dict[str, Any] | None:
    """Energy per inference saved by the chosen config against the baseline, in J and percent."""
    if best is None or baseline is None or best.measurement is None or baseline.measurement is None:
        return None
    chosen_j, base_j = best.measurement.energy_per_inference_j, baseline.measurement.energy_per_inference_j
    if chosen_j is None or base_j is None:
        return None
    return {
        "energy_per_inference_j_baseline": base_j,
        "energy_per_inference_j_chosen": chosen_j,
        "energy_saved_per_inference_j": base_j - chosen_j,
        "energy_saved_percent": 100.0 * (base_j - chosen_j) / base_j if base_j else None,
        "throughput_change_percent": 100.0 * (best.measurement.throughput_per_s.mean / baseline.measurement.throughput_per_s.mean - 1)
        if baseline.measurement.throughput_per_s.mean else None,
        "p99_change_ms": best.measurement.p99_ms.mean - baseline.measurement.p99_ms.mean,
        "within_spread": overlaps(best.measurement, baseline.measurement),
        "energy_source": best.measurement.energy_source,
        "energy_accounting": best.measurement.energy_accounting,
        "total_energy_per_inference_j_baseline": _per_inference(baseline.measurement.total_energy_j, baseline),
        "total_energy_per_inference_j_chosen": _per_inference(best.measurement.total_energy_j, best),
    }


def _per_inference(joules: float | None, result: TrialResult) -> float | None:
    if joules is None or result.measurement is None or not result.measurement.success_count:
        return None
    return joules / result.measurement.success_count


def picks(results: list[TrialResult]) -> dict[str, Any]:
    """Both picks side by side (whatever the objective): the most efficient and the fastest feasible config, and
    the energy price of speed (extra mJ per inference and extra W of the fastest over the most efficient)."""
    efficient, fastest = best_trial(results, "efficiency"), fastest_trial(results)
    price = price_of_speed(efficient, fastest)
    return {
        "most_efficient": _brief(efficient),
        "fastest": _brief(fastest),
        "price_of_speed": price.to_dict() if price is not None else None,
    }


SCREENING_NOTE = (f"a screened trial was stopped after the windows in its record: worse than the best completed trial "
                  f"beyond the measured spread (its 95% CI, or one window plus {SINGLE_WINDOW_SDS:g} sd of the best's "
                  f"windows, below the best's 95% CI), p99 over {P99_FAR_FACTOR:g} x --max-p99-ms in every window, or "
                  "memory over --max-memory-mb; it is never the pick. A tool failure (failure_kind tool) is the load "
                  "tool failing twice on the config: nothing is known of the config, and the sampler was not taught it")
HARDWARE_NOTE = ("trials were measured on {count} hardware groups (GPU model + meters, --allow-mixed-hardware): "
                 "joules on different GPUs or meters do not compare, so each group has its own best config, and "
                 "savings against the baseline are given only within the group that measured it")


def same_hardware_baseline(group: list[TrialResult], baseline: TrialResult | None) -> TrialResult | None:
    """The group's measurement of the baseline config (the earliest), or None when another group measured it."""
    if baseline is None:
        return None
    own = [r for r in group if r.config == baseline.config]
    return min(own, key=lambda r: r.number) if own else None


def hardware_groups(results: list[TrialResult], baseline: TrialResult | None, objective: str,
                    impact: ImpactInputs) -> list[dict[str, Any]]:
    """Per hardware group (GPU model + meters): its trials, hosts, drivers, best, baseline, savings, picks and
    impact, each computed within the group only."""
    groups = []
    for group in group_by_hardware(results):
        known = [r.hardware for r in group if r.hardware is not None]
        best, base = best_trial(group, objective), same_hardware_baseline(group, baseline)
        groups.append({
            "label": known[0].label() if known else "hardware not recorded",
            "gpu_model": known[0].gpu_model if known else None,
            "meters": list(known[0].meters) if known else None,
            "gpu_drivers": sorted({h.gpu_driver for h in known if h.gpu_driver}),
            "hosts": sorted({h.host for h in known if h.host}),
            "trials": [r.number for r in group],
            "best": _brief(best),
            "baseline": _brief(base),
            "savings_vs_baseline": savings(best, base),
            "picks": picks(group),
            "ties_with_best": ties_with(best, group) if best else [],
            "impact": impact_summary(group, best, base, impact),
        })
    return groups


def summary_document(job: SearchJob, outcome: SearchOutcome, exported: Path | None) -> dict[str, Any]:
    """The summary.json body (schema_version is added on write).

    On mixed hardware, what compares the chosen config with others (picks, savings, ties, the year) covers the
    chosen config's hardware group only; hardware_groups has every group's own."""
    front = pareto_front(outcome.results)
    closest = closest_trial(outcome.results) if outcome.best is None else None
    sources = sorted({r.measurement.energy_source for r in outcome.results if r.measurement})
    groups = hardware_groups(outcome.results, outcome.baseline, job.objective, job.impact)
    scope, baseline = outcome.results, outcome.baseline
    if len(groups) > 1 and outcome.best is not None:
        scope = [r for r in outcome.results if hardware_group(r) == hardware_group(outcome.best)]
        baseline = same_hardware_baseline(scope, outcome.baseline)
    impact = impact_summary(outcome.results, outcome.best, baseline, job.impact)
    impact["annual"] = annual_summary(scope, outcome.best, baseline, job.impact)
    return {
        "model": job.model,
        "model_repository": str(Path(job.model_repository).resolve()),
        "model_config_pbtxt": to_text(job.base) if isinstance(job.base, ModelConfig) else None,
        **({"models": set_members_summary(job, outcome, exported), "sharing": outcome.sharing}
           if isinstance(job, SetJob) else {}),
        "input_shapes": {k: list(v) for k, v in job.inputs.shapes.items()},
        "status": "feasible" if outcome.best else "no_feasible_config",
        "stop_reason": outcome.stop_reason,
        "objective": job.objective,
        "objective_description": OBJECTIVES[job.objective],
        "load": job.load_description(),
        "constraints": job.constraints.to_dict(),
        "search_space": job.space.source,
        "best": _brief(outcome.best),
        "picks": picks(scope),
        "baseline": _brief(outcome.baseline),
        "savings_vs_baseline": savings(outcome.best, baseline),
        "closest_infeasible": None if closest is None else {**(_brief(closest[0]) or {}), "most_violated": closest[1]},
        "exported_config": str(exported) if exported else None,
        "pareto_front": [_brief(r) for r in outcome.results if r.number in front],
        "ties_with_best": ties_with(outcome.best, outcome.results) if outcome.best else [],
        "ties_note": "trials whose 95% confidence interval of inferences per joule overlaps the best's",
        "idle_power_w": outcome.idle_power_w,
        "idle_power_total_w": sum(outcome.idle_power_w.values()) if outcome.idle_power_w else None,
        "energy_accounting": job.measure.energy_accounting,
        "repeated_trials": outcome.repeated,
        "warnings": sorted({w for r in outcome.results if r.measurement for w in r.measurement.warnings}),
        "trial_count": len(outcome.results),
        "failed_trial_count": sum(1 for r in outcome.results if r.failed),
        "tool_failure_count": sum(1 for r in outcome.results if r.tool_failure),
        "screened_trial_count": sum(1 for r in outcome.results if r.screened),
        "screened_trials": [{"trial": r.number, "config": r.config.knobs(), "reason": r.screened_reason}
                            for r in outcome.results if r.screened],
        "tool_failures": [{"trial": r.number, "config": r.config.knobs(), "reason": redact(r.failure_reason or "")}
                          for r in outcome.results if r.tool_failure],
        "screening_note": SCREENING_NOTE,
        "duplicate_proposals_reused": outcome.duplicates,
        "server_restarts": outcome.server_restarts,
        "energy_sources": sources,
        "meters": outcome.meter_details,
        "environment": outcome.environment,
        "study": {"storage": mask_url(outcome.storage_url), "name": outcome.study_name},
        "impact": impact,
        "hardware_groups": groups,
        "hardware_note": HARDWARE_NOTE.format(count=len(groups)) if len(groups) > 1 else None,
    }


def set_members_summary(job: SetJob, outcome: SearchOutcome, exported: Path | None) -> dict[str, Any]:
    """A set's models: each one's own config, load, limits, space, its figures in the chosen set (and the baseline
    set) and where its config was exported."""
    out: dict[str, Any] = {}
    for member in job.members:
        figures = {}
        for name, result in (("best", outcome.best), ("baseline", outcome.baseline)):
            m = result.measurement.members.get(member.model) if result and result.measurement else None
            figures[name] = None if m is None or result is None else {
                "config": m.config.knobs(), "throughput_per_s": m.throughput_per_s.to_dict(),
                "p50_ms": m.p50_ms, "p99_ms": m.p99_ms.to_dict(), "failure_rate": m.failure_rate,
                "success_count": m.success_count, "load": m.load,
                "violations": {k.split("/", 1)[1]: v for k, v in result.violations.items()
                               if k.startswith(f"{member.model}/")}}
        out[member.model] = {
            "model_config_pbtxt": to_text(member.base),
            "input_shapes": {k: list(v) for k, v in member.inputs.shapes.items()},
            "input_data": str(member.inputs.input_data) if member.inputs.input_data else None,
            "load": member.load.describe(), "constraints": member.constraints.to_dict(),
            "search_space": member.space.source, **figures,
            "exported_config": str(paths.exported_config_path(job.output, member.model)) if exported else None,
        }
    return out


def trials_frame(results: list[TrialResult], baseline: TrialResult | None,
                 impact: ImpactInputs | None = None) -> pd.DataFrame:
    """One row per measured trial: knobs, measurements with units, sources, feasibility, Pareto, per-million figures."""
    impact = impact or ImpactInputs()
    front = set(pareto_front(results))
    rows = []
    for r in results:
        m = r.measurement
        row: dict[str, Any] = {"trial": r.number, "baseline": baseline is not None and r.number == baseline.number}
        if isinstance(r.config, SetConfig):  # a set: each model's knobs and figures, named MODEL/column
            row.update(_member_columns(r))
        else:
            for knob in KNOBS:
                value = r.config.knobs().get(knob)
                row[knob] = ",".join(map(str, value)) if isinstance(value, list) else value
        row.update({
            "status": r.status,
            "failure_kind": r.failure_kind,
            "screened_reason": r.screened_reason,
            "inferences_per_j": score(m) if m else None,
            "inferences_per_j_sd": m.inferences_per_j.sd if m else None,
            "inferences_per_j_ci95": m.inferences_per_j.ci95 if m else None,
            "energy_per_inference_mj": (m.energy_per_inference_j or 0) * 1000 if m and m.energy_per_inference_j else None,
            "energy_source": m.energy_source if m else None,
            "throughput_per_s": m.throughput_per_s.mean if m else None,
            "throughput_per_s_sd": m.throughput_per_s.sd if m else None,
            "p50_ms": m.p50_ms if m else None,
            "p95_ms": m.p95_ms if m else None,
            "p99_ms": m.p99_ms.mean if m else None,
            "p99_ms_sd": m.p99_ms.sd if m else None,
            "memory_mb": m.memory_mb if m else None,
            "memory_source": m.memory_source if m else None,
            "concurrency": m.load.get("concurrency") if m else None,
            "load_engine": m.load.get("engine") if m else None,
            "failure_rate": m.failure_rate if m else None,
            "stable": m.stable if m else None,
            "repeats": m.repeats if m else None,
            "energy_accounting": m.energy_accounting if m else None,
            "pareto": r.number in front,
            "hardware": r.hardware.label() if r.hardware else None,
            "gpu_driver": r.hardware.gpu_driver if r.hardware else None,
            "host": r.hardware.host if r.hardware else None,
            "failure_reason": redact(r.failure_reason) if r.failure_reason else r.failure_reason,
        })
        row.update(_per_million_columns(r, impact))
        for name, value in r.violations.items():
            if name != "failed":
                row[f"violation_{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def _member_columns(result: TrialResult) -> dict[str, Any]:
    """A set's trial: each model's knobs, then its throughput, latency and failures over the set's windows."""
    assert isinstance(result.config, SetConfig)
    row: dict[str, Any] = {}
    for model, config in result.config.members:
        for knob, value in config.knobs().items():
            row[f"{model}/{knob}"] = ",".join(map(str, value)) if isinstance(value, list) else value
        m = result.measurement.members.get(model) if result.measurement else None
        row[f"{model}/throughput_per_s"] = m.throughput_per_s.mean if m else None
        row[f"{model}/p50_ms"] = m.p50_ms if m else None
        row[f"{model}/p99_ms"] = m.p99_ms.mean if m else None
        row[f"{model}/failure_rate"] = m.failure_rate if m else None
    return row


def _per_million_columns(result: TrialResult, impact: ImpactInputs) -> dict[str, Any]:
    """Per-million-inference kWh, g CO2e and energy cost, with the inputs that made them beside them."""
    figures = trial_per_million(result, impact)
    return {
        "energy_kwh_per_million": figures.energy_kwh if figures else None,
        "carbon_g_per_million": figures.carbon_g if figures else None,
        "energy_cost_per_million": figures.energy_cost if figures else None,
        "pue": impact.pue,
        "carbon_intensity_g_per_kwh": impact.carbon_intensity_g_per_kwh,
        "energy_price_per_kwh": impact.energy_price_per_kwh,
        "currency": impact.currency,
    }


def write_outputs(job: SearchJob, outcome: SearchOutcome, exported: Path | None = None) -> None:
    """Write summary.json and trials.csv atomically; a full disk or a lost folder is one line naming the file (the
    trials themselves are already saved, so --resume rebuilds both)."""
    write_summary(job.output, summary_document(job, outcome, exported))
    write_trials_csv(job.output, outcome.results, outcome.baseline, job.impact)


def write_summary(output: Path, document: dict[str, Any]) -> None:
    """OUTPUT/summary.json, atomically; a failure is one line naming the file."""
    target = paths.summary_path(output)
    try:
        write_json(target, document)
    except OSError as exc:
        raise _write_error(target, exc) from None


def write_trials_csv(output: Path, results: list[TrialResult], baseline: TrialResult | None,
                     impact: ImpactInputs) -> None:
    """OUTPUT/trials.csv (trials_frame), atomically; a failure is one line naming the file."""
    target = paths.trials_csv_path(output)
    try:
        with atomic_path(target) as tmp:
            trials_frame(results, baseline, impact).to_csv(tmp, index=False)
    except OSError as exc:
        raise _write_error(target, exc) from None


def _write_error(target: Path, exc: OSError) -> StorageError:
    return StorageError(f"cannot write {target}: {exc.strerror or exc}; search stopped (every finished trial is "
                        f"saved: --resume continues)")
