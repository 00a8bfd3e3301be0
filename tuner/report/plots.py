"""Figures for the reports: plotly for report.html, matplotlib for the PNG beside report.md."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from tuner.fileio import atomic_path
from tuner.objective import score
from tuner.report.data import ReportData
from tuner.results import TrialResult

STATUS_SYMBOL = {"feasible": "circle", "infeasible": "x", "screened": "triangle-down-open"}
COLORS = {"feasible": "#1b7837", "infeasible": "#b35806", "screened": "#4575b4", "failed": "#777777"}


def _ci(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _hover(data: ReportData, r: TrialResult) -> str:
    m = r.measurement
    assert m is not None
    screened = f"<br>{html.escape(r.screened_reason or '', quote=False)}" if r.screened else ""  # partial windows: say why
    # Plotly reads hover text as HTML: a set's model names come from files, so they are shown as written.
    return (f"trial {r.number} ({data.status(r)}){screened}<br>{html.escape(r.config.describe(), quote=False)}<br>"
            f"{m.inferences_per_j.mean:.2f} ± {_ci(m.inferences_per_j.ci95):.2f} infer/J ({m.energy_source})<br>"
            f"p99 {m.p99_ms.mean:.2f} ms · {m.throughput_per_s.mean:.0f} infer/s")


def _scatter(data: ReportData, x_of: Any, x_err: Any, x_title: str, title: str) -> go.Figure:
    fig = go.Figure()
    measured = [r for r in data.results if r.measurement is not None and not r.failed]
    throughputs = [r.measurement.throughput_per_s.mean for r in measured if r.measurement]
    for status, symbol in STATUS_SYMBOL.items():
        group = [r for r in measured if data.status(r) == status]
        if not group:
            continue
        fig.add_trace(go.Scatter(
            x=[x_of(r) for r in group], y=[score(r.measurement) for r in group],
            error_x={"type": "data", "array": [x_err(r) for r in group], "visible": True, "thickness": 1},
            error_y={"type": "data", "array": [_ci(r.measurement.inferences_per_j.ci95) for r in group if r.measurement],
                     "visible": True, "thickness": 1},
            mode="markers", name=status, text=[_hover(data, r) for r in group], hoverinfo="text",
            marker={"symbol": symbol, "size": 12, "color": [r.measurement.throughput_per_s.mean for r in group if r.measurement],
                    "colorscale": "Viridis", "cmin": min(throughputs, default=0), "cmax": max(throughputs, default=1),
                    "showscale": status == "feasible" or not any(data.status(r) == "feasible" for r in measured),
                    "colorbar": {"title": "throughput<br>(infer/s)"}, "line": {"width": 1, "color": "#333"}},
        ))
    for number, label, symbol in _marked(data):
        r = data.result(number)
        if r is not None and r.measurement is not None:
            fig.add_trace(go.Scatter(x=[x_of(r)], y=[score(r.measurement)], mode="markers+text", name=label,
                                     text=[f"{label} (trial {r.number})"],
                                     textposition="bottom center" if label == "baseline" else "top center",
                                     textfont={"color": "#c51b7d"},
                                     marker={"symbol": symbol, "size": 24, "color": "#c51b7d", "line": {"width": 3}},
                                     hoverinfo="skip"))
    failed = [r for r in data.results if r.failed]
    if failed:
        fig.add_annotation(text=f"{len(failed)} failed trial(s) are not plotted: see the table", showarrow=False,
                           xref="paper", yref="paper", x=0, y=1.08, font={"color": COLORS["failed"]})
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="inferences per joule (higher is better)",
                      template="plotly_white", height=480, legend={"orientation": "h", "y": -0.2},
                      margin={"l": 60, "r": 20, "t": 70, "b": 60})
    return fig


def _marked(data: ReportData) -> list[tuple[int | None, str, str]]:
    """Points to mark: the baseline and the chosen config (one mark when they are the same trial); in a hardware
    group's view, the group's best."""
    chosen = "best here" if data.group_label and data.best_number != data.exported_number else "chosen"
    if data.best_number is not None and data.best_number == data.baseline_number:
        return [(data.best_number, f"{chosen} = baseline", "star-open")]
    return [(data.baseline_number, "baseline", "square-open"), (data.best_number, chosen, "star-open")]


def _constraint_line(fig: go.Figure, data: ReportData, limit: float | None, label: str, x_values: list[float]) -> None:
    """A dashed constraint line; when it lies far beyond every point, a note instead (so points stay readable)."""
    if not limit:
        return
    top = max(x_values, default=0.0)
    if top and limit > 3 * top:
        fig.add_annotation(text=f"{label}: beyond every point (all within it)", showarrow=False, xref="paper",
                           yref="paper", x=1, y=1.08, xanchor="right", font={"color": "#d73027"})
        return
    fig.add_vline(x=limit, line_dash="dash", line_color="#d73027", annotation_text=label,
                  annotation_position="top left")


def pareto_figure(data: ReportData) -> go.Figure:
    """Inferences per joule vs p99 latency: the Pareto front, constraint line, baseline and chosen config."""
    fig = _scatter(data, lambda r: r.measurement.p99_ms.mean, lambda r: _ci(r.measurement.p99_ms.ci95),
                   "p99 latency (ms, lower is better)", "Pareto front: energy efficiency vs p99 latency")
    front = sorted((data.result(n) for n in data.pareto()), key=lambda r: r.measurement.p99_ms.mean if r and r.measurement else 0)
    points = [r for r in front if r is not None and r.measurement is not None]
    if len(points) > 1:
        fig.add_trace(go.Scatter(x=[r.measurement.p99_ms.mean for r in points if r.measurement],
                                 y=[score(r.measurement) for r in points], mode="lines", name="Pareto front",
                                 line={"dash": "dot", "color": "#555"}, hoverinfo="skip"))
    limit = (data.summary.get("constraints") or {}).get("max_p99_ms")
    _constraint_line(fig, data, limit, f"max p99 {limit:g} ms" if limit else "",
                     [r.measurement.p99_ms.mean for r in data.results if r.measurement])
    return fig


def throughput_figure(data: ReportData) -> go.Figure:
    """Inferences per joule vs throughput, with the minimum-throughput line."""
    fig = _scatter(data, lambda r: r.measurement.throughput_per_s.mean,
                   lambda r: _ci(r.measurement.throughput_per_s.ci95), "throughput (infer/s, higher is better)",
                   "Energy efficiency vs throughput")
    limit = (data.summary.get("constraints") or {}).get("min_throughput_per_s")
    _constraint_line(fig, data, limit, f"min throughput {limit:g} infer/s" if limit else "",
                     [r.measurement.throughput_per_s.mean for r in data.results if r.measurement])
    return fig


def importance_figure(data: ReportData) -> go.Figure | None:
    """Optuna's parameter importances as horizontal bars."""
    if not data.importances:
        return None
    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k.removesuffix("_exp") for k, _ in items], orientation="h",
                           marker_color="#4575b4"))
    fig.update_layout(title="Parameter importance", xaxis_title=f"importance, sums to 1 ({data.importance_note})",
                      template="plotly_white", height=320, margin={"l": 200, "r": 20, "t": 50, "b": 50})
    return fig


def progress_figure(data: ReportData) -> go.Figure:
    """Inferences per joule per trial and the best feasible so far."""
    fig = go.Figure()
    for status, color in COLORS.items():
        group = [r for r in data.results if data.status(r) == status]
        if group:
            fig.add_trace(go.Scatter(x=[r.number for r in group], y=[score(r.measurement) for r in group],
                                     mode="markers", name=status, marker={"color": color, "size": 10},
                                     text=[html.escape(r.config.describe(), quote=False) for r in group]))
    best, xs, ys = None, [], []
    for r in data.results:
        if r.feasible:
            best = max(best or 0.0, score(r.measurement))
        if best is not None:
            xs.append(r.number)
            ys.append(best)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"shape": "hv", "color": "#1b7837"},
                             name="best feasible so far"))
    fig.update_xaxes(dtick=1)
    fig.update_layout(title="Search progress", xaxis_title="trial", yaxis_title="inferences per joule",
                      template="plotly_white", height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def pareto_png(data: ReportData, path: Path) -> Path:
    """The Pareto view as a PNG (matplotlib) for report.md."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for status, marker in (("feasible", "o"), ("infeasible", "x"), ("screened", "v")):
        group = [r for r in data.results if data.status(r) == status and r.measurement is not None]
        if group:
            ax.errorbar([r.measurement.p99_ms.mean for r in group if r.measurement],
                        [score(r.measurement) for r in group],
                        yerr=[_ci(r.measurement.inferences_per_j.ci95) for r in group if r.measurement],
                        fmt=marker, color=COLORS[status], label=status, capsize=3)
    for number, label, symbol in _marked(data):
        marker = "s" if symbol.startswith("square") else "*"
        r = data.result(number)
        if r is not None and r.measurement is not None:
            ax.scatter([r.measurement.p99_ms.mean], [score(r.measurement)], s=260, marker=marker,
                       facecolors="none", edgecolors="#c51b7d", linewidths=2, label=f"{label} (trial {r.number})")
    limit = (data.summary.get("constraints") or {}).get("max_p99_ms")
    if limit:
        ax.axvline(limit, color="#d73027", linestyle="--", label=f"max p99 {limit:g} ms")
    source = ", ".join(data.summary.get("energy_sources") or []) or "unknown"
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel(f"inferences per joule ({source})")
    where = f" on {data.group_label}" if data.group_label else ""
    ax.set_title(f"{data.model}{where}: energy efficiency vs p99 (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
