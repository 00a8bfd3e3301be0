"""The report's impact section: chosen, fastest and baseline configs per million inferences and per year."""

from __future__ import annotations

import html
from typing import Any

from tuner.impact import significant
from tuner.objective import fastest_trial
from tuner.report.data import ReportData
from tuner.report.words import impact_inputs_words

ROLES = (("chosen", "chosen (most inferences per joule)"), ("fastest", "fastest (highest throughput)"),
         ("baseline", "baseline (the model's own config; in a set, each model's)"))


def _num(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{significant(float(value))}{suffix}"


def impact_section(data: ReportData) -> str:
    """HTML: the inputs, then a table of the three configs; carbon and cost columns only when their input was given."""
    impact = data.summary.get("impact")
    if not impact:
        return '<p class="muted">No impact figures in this summary (written by an older greentune).</p>'
    inputs = impact.get("inputs") or {}
    currency = html.escape(inputs.get("currency") or "currency units")
    per_million = {row["trial"]: row for row in impact.get("per_million_inferences") or []}
    annual = impact.get("annual") or {}
    configs = annual.get("configs") or {}
    picks = {"chosen": data.best_number, "fastest": _fastest(data, configs), "baseline": data.baseline_number}
    carbon = inputs.get("carbon_intensity_g_per_kwh") is not None
    price = inputs.get("energy_price_per_kwh") is not None
    machines = inputs.get("machine_price_per_hour") is not None and bool(annual)
    heads = ["config", "trial", "mJ / inference", "throughput (infer/s)", "kWh / million"]
    heads += ["g CO2e / million"] * carbon + [f"energy {currency} / million"] * price
    if annual:
        heads += ["kWh / year"] + ["kg CO2e / year"] * carbon + [f"energy {currency} / year"] * price
        heads += ["machines", f"machines {currency} / year"] * machines
    rows = []
    for role, label in ROLES:
        number = picks.get(role)
        result = data.result(number)
        if result is None or result.measurement is None:
            continue
        m, row, year = result.measurement, per_million.get(number) or {}, configs.get(role) or {}
        energy_mj = m.energy_per_inference_j * 1000 if m.energy_per_inference_j else None
        if role == "chosen" and data.group_label and number != data.exported_number:
            label = "best on this hardware (most inferences per joule)"
        cells = [label, str(number), _num(energy_mj), _num(m.throughput_per_s.mean),
                 _num(row.get("energy_kwh_per_million"))]
        cells += [_num(row.get("carbon_g_per_million"))] * carbon + [_num(row.get("energy_cost_per_million"))] * price
        if annual:
            cells += [_num(year.get("energy_kwh_per_year"))] + [_num(year.get("carbon_kg_per_year"))] * carbon
            cells += [_num(year.get("energy_cost_per_year"))] * price
            cells += [_num(year.get("machines")), _num(year.get("machine_cost_per_year"))] * machines
        rows.append("<tr>" + "".join(f'<td class="{"text" if i == 0 else ""}">{html.escape(c)}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in heads)
    sentence = annual.get("sentence")
    lead = f'<p class="impact-sentence"><b>Per year:</b> {html.escape(sentence)}</p>' if sentence else ""
    notes = ('<p class="muted">Inputs: ' + html.escape(impact_inputs_words(impact)) + "</p>"
             + '<p class="muted">Arithmetic: ' + html.escape(str(impact.get("arithmetic", ""))) + ". Energy is "
             "what the meters measured (" + html.escape(", ".join(data.summary.get("energy_sources") or [])) +
             ") at the measured load, times PUE; it covers the metered devices only. Configs within each other's "
             "95% interval are a tie, not a saving.</p>")
    return f"{lead}<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{notes}"


def _fastest(data: ReportData, configs: dict[str, Any]) -> int | None:
    if configs.get("fastest"):
        return int(configs["fastest"]["trial"])
    fastest = fastest_trial(data.results)
    return fastest.number if fastest else None
