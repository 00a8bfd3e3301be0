"""report.md: a short summary for a pull-request comment, with pareto.png beside it."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from tuner import paths
from tuner.fileio import atomic_write
from tuner.model_config import ModelConfig, apply_trial, to_text
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
    stopped_trials,
)
from tuner.report.words import Table, member_table, sharing_table
from tuner.results import SetConfig

TOP_COUNT = 5
# Characters that make Markdown or HTML of a value (a failure reason, a config, a host, the command line): escaped.
# A '>' is inert once every '<' is escaped, except first on a line (a quote); literal() escapes it there, and keeps the
# report's own arrows ("140 -> 70 kWh") as written.
_ESCAPES = str.maketrans({"\\": "\\\\", "`": "\\`", "|": "\\|", "[": "\\[", "]": "\\]",
                          "&": "&amp;", "<": "&lt;"})


def config_diff(data: ReportData) -> str | None:
    """Unified diff of the chosen config.pbtxt against the model's own."""
    best = data.result(data.best_number)
    if best is None:
        return None
    from google.protobuf import text_format

    if isinstance(best.config, SetConfig):  # a set: one diff per model
        models = data.summary.get("models") or {}
        own = [(model, (models.get(model) or {}).get("model_config_pbtxt"), trial) for model, trial in best.config.members]
    else:
        own = [("", data.summary.get("model_config_pbtxt"), best.config)]
    diffs: list[str] = []
    for model, text, trial in own:
        if not text:
            return None
        base = ModelConfig()
        text_format.Parse(text, base)
        chosen = apply_trial(base, trial)
        where = f"{model}/" if model else ""
        diffs += difflib.unified_diff(to_text(base).splitlines(), to_text(chosen).splitlines(),
                                      f"baseline/{where}config.pbtxt", f"chosen/{where}config.pbtxt (trial {best.number})",
                                      lineterm="")
    return "\n".join(diffs)


def _compared(data: ReportData, level: str, title: str = "greentune: ") -> list[str]:
    """Headline, both picks and the top configs: everything that compares the trials' joules."""
    head = headline(data)
    out = [f"{level} {title}{literal(head.title)}", ""]
    out += [f"- {literal(line)}" for line in head.lines]
    if head.tie:
        out.append("- **Within the measurement spread of the baseline: a tie, not a proven saving.**")
    if not data.group_label:  # a hardware group's view: the set's sections stand once, above the groups
        out += set_sections(data, level + "#")
    both = picks(data)
    out += ["", f"{level}# Most efficient vs fastest feasible config", ""]
    if both.rows:
        out += ["| | most efficient | fastest |", "|---|---|---|"]
        out += [f"| {literal(label)} | {literal(a)} | {literal(b)} |" for label, a, b in both.rows]
        out.append("")
    out.append(literal(both.sentence))
    out += ["", f"{level}# Top configs ({len(data.ranked())} feasible of {len(data.results)} measured)", "",
            "| trial | config | infer/J (95% CI) | mJ / inference | throughput (infer/s) | p99 (ms) | memory (MB) |",
            "|---|---|---|---|---|---|---|"]
    for r in data.ranked()[:TOP_COUNT]:
        m = r.measurement
        assert m is not None
        e = energy_per_inference_mj(r)
        marks = " (chosen)" if r.number == data.exported_number else ""
        marks += " (best on this hardware)" if data.group_label and r.number == data.best_number else ""
        marks += " (baseline)" if r.number == data.baseline_number else ""
        ci = m.inferences_per_j.ci95
        out.append(f"| {r.number}{marks} | {literal(r.config.describe())} | {score(m):.2f} ± {ci if ci == ci else 0:.2f} | "
                   f"{e[0] if e else float('nan'):.3f} | {m.throughput_per_s.mean:.0f} | {m.p99_ms.mean:.2f} | "
                   f"{m.memory_mb or float('nan'):.0f} |")
    stopped = stopped_trials(data)
    if stopped:
        out += ["", f"{level}# Screened and failed trials", "", literal(stopped_sentence(data) or ""), "",
                "| trial | config | status | why |", "|---|---|---|---|"]
        out += [f"| {number} | {literal(config)} | {literal(status)} | {literal(why)} |"
                for number, config, status, why in stopped]
    sources = ", ".join(data.summary.get("energy_sources") or [])
    return out + ["", f"Energy source: {literal(sources)}. Memory: {literal(_memory_source(data))}."]


def set_sections(data: ReportData, level: str) -> list[str]:
    """A set of models: each model in the chosen set, and what sharing one server saves; nothing for one model."""
    if not data.set_models:
        return []
    return ["", f"{level} Each model in the chosen set", "", *_table(member_table(data)),
            "", f"{level} What sharing one server saves", "", *_table(sharing_table(data.summary.get("sharing")))]


def _table(table: Table) -> list[str]:
    """A Markdown table (when it has rows), then its sentences as paragraphs; every cell shown as written."""
    out = []
    if table.rows:
        out += ["| " + " | ".join(literal(head) for head in table.heads) + " |", "|---" * len(table.heads) + "|"]
        out += ["| " + " | ".join(literal(cell) for cell in row) + " |" for row in table.rows]
    for note in table.notes:
        out += ["", literal(note)] if out else [literal(note)]
    return out


def literal(value: object) -> str:
    """A value as Markdown that shows it as written (a table cell too): one line, Markdown and HTML characters escaped."""
    escaped = " ".join(str(value).split()).translate(_ESCAPES)
    return "&gt;" + escaped[1:] if escaped.startswith(">") else escaped


def _fence(body: str) -> str:
    """A code fence longer than any run of backticks in body, so body cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    return "`" * max(3, longest + 1)


def render_markdown(data: ReportData, png_name: str | None) -> str:
    """The Markdown body: one section per hardware group when the trials span more than one (they do not compare)."""
    views = data.hardware_views()
    if views:
        head = hardware_headline(data, views)
        out = [f"## greentune: {literal(head.title)}", "", *[f"- {literal(line)}" for line in head.lines]]
        out += set_sections(data, "###")
        for i, view in enumerate(views, 1):
            hosts = ", ".join(map(str, (view.summary.get("hardware_group") or {}).get("hosts") or [])) or "not recorded"
            out += ["", *_compared(view, "###", f"Hardware group {i}: ")]
            out.append(f"Hosts: {literal(hosts)}. Compared only with the trials of this group.")
    else:
        out = _compared(data, "##")
        hardware = hardware_line(data)
        if hardware:
            out.append(f"Hardware: {literal(hardware)}.")
    diff = config_diff(data)
    if diff:
        fence = _fence(diff)
        out += ["", "### config.pbtxt change", "", f"{fence}diff", diff, fence]
    if png_name:
        shown = data.chosen_view().group_label
        out += ["", f"![Pareto front: inferences per joule vs p99{' on ' + literal(shown) if shown else ''}]({png_name})"]
    out += ["", f"<sub>{literal(data.summary.get('environment', {}).get('command_line', ''))}</sub>", ""]
    return "\n".join(out)


def _memory_source(data: ReportData) -> str:
    sources = {r.measurement.memory_source for r in data.results if r.measurement}
    return ", ".join(sorted(sources)) or "not measured"


def write_markdown_report(data: ReportData) -> list[Path]:
    """Write OUTPUT/report.md and OUTPUT/pareto.png."""
    _, path, png_path = paths.report_paths(data.output_dir)
    png = plots.pareto_png(data.chosen_view(), png_path) if data.results else None  # mixed hardware: one group
    atomic_write(path, render_markdown(data, png.name if png else None))
    return [path] + ([png] if png else [])
