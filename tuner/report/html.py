"""report.html: a self-contained page (plotly's JavaScript embedded) that opens offline."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from tuner import paths
from tuner.fileio import atomic_write
from tuner.objective import score
from tuner.report import plots
from tuner.report.data import (
    ReportData,
    energy_per_inference_mj,
    hardware_headline,
    hardware_line,
    headline,
    picks,
    stopped_sentence,
)
from tuner.report.impact_view import impact_section
from tuner.report.words import Table, member_table, provenance_items, sharing_table
from tuner.results import KNOBS, SetConfig, TrialConfig, TrialResult

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 8px} h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.headline{background:#fff;border-left:6px solid #1b7837;padding:16px 20px;box-shadow:0 1px 3px #0002}
.headline.none{border-left-color:#d73027} .headline p{margin:6px 0;font-size:1.05em}
.tie{color:#b35806;font-weight:600}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:16px} .card{background:#fff;box-shadow:0 1px 3px #0002;padding:8px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:.85em}
th,td{border:1px solid #ddd;padding:4px 6px;text-align:right;white-space:nowrap}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0} td.text{text-align:left;white-space:normal}
tr.feasible td:first-child{border-left:4px solid #1b7837} tr.infeasible td:first-child{border-left:4px solid #b35806}
tr.failed td:first-child{border-left:4px solid #777} tr.screened td:first-child{border-left:4px solid #4575b4}
tr.chosen{background:#fde0ef}
.scroll{max-height:600px;overflow:auto} dl{display:grid;grid-template-columns:220px 1fr;gap:4px 12px}
dt{font-weight:600} dd{margin:0;word-break:break-all} .muted{color:#666;font-size:.9em}
"""

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, col){
  th.addEventListener('click', function(){
    var table = th.closest('table'), body = table.tBodies[0];
    var rows = Array.from(body.rows), asc = th.dataset.dir !== 'asc';
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v ?? a.cells[col].textContent, y = b.cells[col].dataset.v ?? b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
      return asc ? c : -c;
    });
    th.dataset.dir = asc ? 'asc' : 'desc';
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _cell(value: Any, digits: int = 2, text: bool = False) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return '<td data-v="">–</td>'
    if isinstance(value, float):
        return f'<td data-v="{value}">{value:.{digits}f}</td>'
    cls = ' class="text"' if text else ""
    return f"<td{cls}>{html.escape(str(value))}</td>"


def _knob_columns(data: ReportData) -> list[tuple[str | None, str]]:
    """(model, knob) per knob column: one model's every knob; a set's, each model's knobs that some trial set."""
    if not data.set_models:
        return [(None, knob) for knob in KNOBS]
    used = {(model, knob) for r in data.results if isinstance(r.config, SetConfig)
            for model, config in r.config.members for knob in config.knobs()}
    return [(model, knob) for model in data.set_models for knob in KNOBS if (model, knob) in used]


def _knob_value(result: TrialResult, model: str | None, knob: str) -> Any:
    """A knob's value in a trial (a list as '1,2'); a set's from the model's own config."""
    config = result.config
    if model is not None:
        config = config.of(model) if isinstance(config, SetConfig) and model in config.models else TrialConfig()
    value = config.knobs().get(knob)
    return ",".join(map(str, value)) if isinstance(value, list) else value


def trials_table(data: ReportData) -> str:
    """A sortable table of every trial with knobs, measurements, sources and failure reasons."""
    knobs = _knob_columns(data)
    heads = ["trial", "status", "infer/J", "± 95% CI", "mJ / inference", "throughput (infer/s)", "p99 (ms)",
             "p50 (ms)", "memory (MB)", *(f"{model}/{knob}" if model else knob for model, knob in knobs),
             "energy source", "memory source", "concurrency", "failed req.",
             "stable", "Pareto", "failure or screening reason / constraint violations"]
    pareto = set(data.pareto())
    rows = []
    for r in data.results:
        m = r.measurement
        status = data.status(r)
        classes = [status] + (["chosen"] if r.number == data.exported_number else [])
        label = str(r.number) + (" (baseline)" if r.number == data.baseline_number else "") + (
            " (chosen)" if r.number == data.exported_number else "") + (
            " (best on this hardware)" if data.group_label and r.number == data.best_number else "")
        cells = [f'<td data-v="{r.number}">{html.escape(label)}</td>', _cell(data.status_label(r))]
        e = energy_per_inference_mj(r)
        broken = ", ".join(f"{k} +{v:.0%}" for k, v in r.violations.items() if v > 0 and k != "failed")
        cells += [
            _cell(score(m) if m else None), _cell(m.inferences_per_j.ci95 if m else None),
            _cell(e[0] if e else None, 3), _cell(m.throughput_per_s.mean if m else None, 1),
            _cell(m.p99_ms.mean if m else None), _cell(m.p50_ms if m else None), _cell(m.memory_mb if m else None, 0),
        ]
        cells += [_cell(_knob_value(r, model, knob)) for model, knob in knobs]
        cells += [
            _cell(m.energy_source if m else None, text=True),
            _cell(m.memory_source if m else None, text=True), _cell(m.load.get("concurrency") if m else None),
            _cell(m.failure_count if m else None), _cell(("yes" if m.stable else "no") if m else None),
            _cell("yes" if r.number in pareto else ""),
            _cell(r.failure_reason or "; ".join(x for x in (r.screened_reason, broken) if x), text=True),
        ]
        rows.append(f'<tr class="{" ".join(classes)}">{"".join(cells)}</tr>')
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return (f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def picks_table(data: ReportData) -> str:
    """Both picks side by side and the energy price of speed."""
    both = picks(data)
    rows = "".join(f'<tr><th>{html.escape(label)}</th><td class="text">{html.escape(a)}</td>'
                   f'<td class="text">{html.escape(b)}</td></tr>' for label, a, b in both.rows)
    table = (f'<table class="picks"><thead><tr><th></th><th>most efficient</th><th>fastest</th></tr></thead>'
             f"<tbody>{rows}</tbody></table>" if rows else "")
    return f'{table}<p class="price">{html.escape(both.sentence)}</p>'


def _table_html(table: Table, name: str) -> str:
    """A table of plain-text cells (when it has rows), then its sentences; every value escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.heads)
    rows = "".join("<tr>" + "".join(f'<td class="text">{html.escape(cell)}</td>' for cell in row) + "</tr>"
                   for row in table.rows)
    notes = "".join(f"<p>{html.escape(note)}</p>" for note in table.notes)
    return (f'<table class="{name}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            if table.rows else "") + notes


def set_sections(data: ReportData) -> str:
    """A set of models: each model in the chosen set, and what sharing one server saves; nothing for one model."""
    if not data.set_models:
        return ""
    return (f'<h2>Each model in the chosen set</h2>{_table_html(member_table(data), "set-models")}'
            f'<h2>What sharing one server saves</h2>{_table_html(sharing_table(data.summary.get("sharing")), "sharing")}')


def provenance(data: ReportData) -> str:
    """Where and how the numbers were made, in words."""
    s = data.summary
    items = provenance_items(s)
    rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in items.items())
    warnings = s.get("warnings") or []
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f"<dl>{rows}</dl>" + (f"<h3>Measurement warnings</h3><ul>{warn}</ul>" if warn else "")


class _Plots:
    """Figures as HTML fragments; plotly's JavaScript is embedded with the first one only."""

    def __init__(self) -> None:
        self.included = False

    def html(self, fig: go.Figure) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=not self.included, config={"displaylogo": False})
        self.included = True
        return str(out)


def _headline_html(data: ReportData) -> str:
    head = headline(data)
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in head.lines)
    tie = ('<p class="tie">Within the measurement spread of the baseline: a tie, not a proven saving.</p>'
           if head.tie else "")
    ties = data.summary.get("ties_with_best") or []
    tie_note = (f'<p class="muted">Trials statistically tied with the chosen one (95% CIs overlap): '
                f'{html.escape(", ".join(map(str, ties)))}.</p>' if ties else "")
    level = "h3" if data.group_label else "h2"
    return (f'<section class="headline{"" if data.best_number is not None else " none"}"><{level} style="border:0;'
            f'margin:0 0 8px">{html.escape(head.title)}</{level}>{lines}{tie}{tie_note}</section>')


def _results_html(data: ReportData, plots_html: _Plots, level: str) -> str:
    """Picks, impact, Pareto front and the trials table: everything that compares the trials' joules."""
    pareto, throughput = plots_html.html(plots.pareto_figure(data)), plots_html.html(plots.throughput_figure(data))
    sentence = stopped_sentence(data)
    stopped = f'<p class="stopped">{html.escape(sentence)}</p>' if sentence else ""
    return f"""<{level}>Most efficient vs fastest feasible config</{level}>{picks_table(data)}
<{level}>Energy, carbon and cost at your traffic</{level}>{impact_section(data)}
<{level}>Pareto front</{level}>
<div class="grid"><div class="card">{pareto}</div><div class="card">{throughput}</div></div>
<{level}>All trials</{level}><p class="muted">Click a column to sort. Energy figures carry their source; ± is the 95% confidence interval over measurement windows.</p>{stopped}
{trials_table(data)}"""


def _group_section(view: ReportData, index: int, plots_html: _Plots) -> str:
    """One hardware group: its own headline, picks, impact, plots and trials, compared with nothing outside it."""
    group = view.summary.get("hardware_group") or {}
    hosts = ", ".join(group.get("hosts") or []) or "not recorded"
    drivers = ", ".join(group.get("gpu_drivers") or []) or "none recorded"
    return (f'<section class="hardware-group"><h2>Hardware group {index}: {html.escape(view.group_label)}</h2>'
            f'<p class="muted">{len(view.results)} trials; hosts: {html.escape(hosts)}; GPU drivers: '
            f'{html.escape(drivers)}. Compared only with each other.</p>{_headline_html(view)}'
            f'{_results_html(view, plots_html, "h3")}'
            f'<h3>Search progress</h3><div class="card">{plots_html.html(plots.progress_figure(view))}</div></section>')


def render_html(data: ReportData) -> str:
    """The whole page: one section per hardware group when the trials span more than one (they do not compare)."""
    plots_html = _Plots()
    views = data.hardware_views()
    if views:
        head = hardware_headline(data, views)
        lines = "".join(f"<p>{html.escape(line)}</p>" for line in head.lines)
        top = (f'<section class="headline mixed-hardware"><h2 style="border:0;margin:0 0 8px">'
               f'{html.escape(head.title)}</h2>{lines}</section>')
        body = "".join(_group_section(view, i, plots_html) for i, view in enumerate(views, 1))
        search = ""
    else:
        top = _headline_html(data)
        body = _results_html(data, plots_html, "h2")
        search = f'<div class="card">{plots_html.html(plots.progress_figure(data))}</div>'
    top += set_sections(data)  # a set's models and sharing: once, above the hardware groups when there are several
    importance = plots.importance_figure(data)
    importance_html = (plots_html.html(importance) if importance else
                       f'<p class="muted">Parameter importance: {html.escape(data.importance_note)}.</p>')
    hardware = hardware_line(data)
    hardware_html = f" · hardware: {html.escape(hardware)}" if hardware and not views else ""
    models = data.set_models
    what = f" (a set of {len(models)} models on one server)" if models else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>greentune report: {html.escape(data.model)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body><main>
<h1>greentune report: {html.escape(data.model)}{what}</h1>
<p class="muted">{len(data.results)} configs measured · stop: {html.escape(str(data.summary.get('stop_reason')))} ·
energy: {html.escape(', '.join(data.summary.get('energy_sources') or []))}{hardware_html}</p>
{top}
{body}
<h2>Search</h2><div class="grid">{search}<div class="card">{importance_html}</div></div>
<h2>Provenance</h2>{provenance(data)}
</main><script>{SORT_JS}</script></body></html>
"""


def write_html_report(data: ReportData) -> Path:
    """Write OUTPUT/report.html atomically."""
    path = paths.report_paths(data.output_dir)[0]
    atomic_write(path, render_html(data))
    return path
