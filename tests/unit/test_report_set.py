"""Reports of a set of models tuned on one server (search --models): each model's section, the set's headline and
what sharing one server saves, from an output folder written by the real writers; one model's report is unchanged.

No server: the trials are hand-made results, the sharing figures come from modelset.sharing_summary."""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_picks import EFFICIENT, FAST, TOO_SLOW_P99, documents
from tuner import paths
from tuner.impact import ImpactInputs
from tuner.modelset import SHARING_NOTE, sharing_summary
from tuner.objective import Constraints, set_violations
from tuner.outputs import write_summary, write_trials_csv
from tuner.report import load_report_data, plots, write_reports
from tuner.report.words import member_limits
from tuner.results import Hardware, Measurement, SetConfig, Spread, TrialConfig, TrialResult, write_json

FANCY = "x<b>y|z"  # a model name from a file: Markdown and HTML characters in it must show as written
MODELS = ("alpha", FANCY)
LOADS = {"alpha": {"mode": "concurrency", "concurrency": 8, "engine": "builtin"},
         FANCY: {"mode": "request_rate", "request_rate_per_s": 40, "engine": "builtin"}}
LIMITS = {"alpha": Constraints(max_p99_ms=20), FANCY: Constraints(max_p99_ms=250)}
SERVER_LIMITS = Constraints()
SOURCE = "rapl"
DURATION_S = 6.0


def own(model: str, config: TrialConfig, tput: float, p99: Spread, tput_sd: float = 3.0) -> Measurement:
    """One model's figures in a set: its requests over the set's windows, no energy of its own."""
    count = int(tput * DURATION_S)
    return Measurement(
        config=config, load=LOADS[model], throughput_per_s=Spread(tput, tput_sd, 3), p50_ms=p99.mean / 2,
        p95_ms=p99.mean * 0.9, p99_ms=p99, energy_j=None, energy_source="unavailable", energy_domains_j={},
        inferences_per_j=Spread.of([]), memory_mb=None, memory_source="unavailable", success_count=count,
        failure_count=0, duration_s=DURATION_S, stable=True)


def the_set(config: SetConfig, members: dict[str, Measurement], energy_j: float) -> Measurement:
    """The set's totals: every model's inferences over every joule of the server."""
    count = sum(m.success_count for m in members.values())
    tput = count / DURATION_S
    return Measurement(
        config=config, load={"mode": "set", "members": LOADS}, throughput_per_s=Spread(tput, 2.0, 3),
        p50_ms=5.0, p95_ms=9.0, p99_ms=Spread(max(m.p99_ms.mean for m in members.values()), 0.5, 3),
        energy_j=energy_j, energy_source=SOURCE, energy_domains_j={"package-0": energy_j},
        inferences_per_j=Spread(count / energy_j, 0.4, 3), memory_mb=300.0, memory_source="RSS of server processes",
        success_count=count, failure_count=0, duration_s=DURATION_S, stable=True, members=members)


def alone(model: str, config: TrialConfig, tput: float, energy_j: float) -> Measurement:
    """One model on a server of its own, metered."""
    m = own(model, config, tput, Spread(5.0, 0.2, 3))
    return replace(m, energy_j=energy_j, energy_source=SOURCE,
                   inferences_per_j=Spread(m.success_count / energy_j, 0.1, 3))


BASE = SetConfig((("alpha", TrialConfig(instance_count=1, dynamic_batching=False)), (FANCY, TrialConfig(instance_count=1))))
CHOSEN = SetConfig((("alpha", TrialConfig(instance_count=2, dynamic_batching=True)), (FANCY, TrialConfig(instance_count=1))))


def trial(number: int, config: SetConfig, figures: dict[str, tuple[float, Spread]], energy_j: float) -> TrialResult:
    members = {model: own(model, config.of(model), tput, p99) for model, (tput, p99) in figures.items()}
    m = the_set(config, members, energy_j)
    return TrialResult(number, config, m, None, set_violations(m, SERVER_LIMITS, LIMITS))


BASELINE = trial(0, BASE, {"alpha": (150.0, Spread(16.0, 1.0, 3)), FANCY: (39.5, Spread(9.0, 0.5, 3))}, 90.0)
BEST = trial(1, CHOSEN, {"alpha": (200.0, Spread(12.5, 1.0, 3)), FANCY: (39.0, Spread(11.0, 0.5, 3))}, 60.0)
# Alone: alpha 0.04 J and the other 0.1 J per inference -> 8 W + 3.9 W at their rates in the set, against 10 W together.
SHARING = sharing_summary("best", 1, CHOSEN, BEST.measurement,
                          {"alpha": alone("alpha", CHOSEN.of("alpha"), 200.0, 48.0),
                           FANCY: alone(FANCY, CHOSEN.of(FANCY), 40.0, 24.0)})


def summary(sharing: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json of the set's search, trimmed to what the reports read."""
    return {
        "model": "+".join(MODELS), "model_config_pbtxt": None, "status": "feasible", "objective": "efficiency",
        "models": {model: {"model_config_pbtxt": None, "load": LOADS[model], "constraints": LIMITS[model].to_dict(),
                           "search_space": "cpu (built-in)"} for model in MODELS},
        "sharing": sharing, "load": {"mode": "set", "members": LOADS}, "constraints": SERVER_LIMITS.to_dict(),
        "search_space": "cpu (built-in)", "best": {"trial": 1}, "baseline": {"trial": 0},
        "energy_sources": [SOURCE], "stop_reason": "trial budget reached", "environment": {}, "study": {},
    }


def render(folder: Path, sharing: dict[str, Any] | None, baseline: TrialResult = BASELINE,
           best: TrialResult = BEST) -> tuple[str, str]:
    """Write the folder as a set's search leaves it, render both reports; (report.md, report.html)."""
    for result in (baseline, best):
        write_json(paths.trial_record_path(folder, result.number), {"trial": result.to_dict()})
    write_summary(folder, summary(sharing))
    write_trials_csv(folder, [baseline, best], baseline, ImpactInputs())
    write_reports(str(folder))
    page, markdown, _ = paths.report_paths(folder)
    return markdown.read_text(), page.read_text()


def md_row(markdown: str, first_cell: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {first_cell} |"))


def test_each_model_has_its_row_in_both_reports_with_its_own_figures_and_limits(tmp_path):
    markdown, page = render(tmp_path, SHARING)
    assert "### Each model in the chosen set" in markdown and "<h2>Each model in the chosen set</h2>" in page
    alpha = md_row(markdown, "alpha")
    # throughput 200 ± t(2) * 3 / sqrt(3) = 7.5; p99 12.5 ± t(2) * 1 / sqrt(3) = 2.48; baseline 150 -> +33.3%
    for cell in ("instance_count=2 dynamic_batching=on", "closed loop, 8 requests in flight, driven by builtin",
                 "200.0 ± 7.5", "6.25", "12.50 ± 2.48", "0 of 1200 (0.00%)", "p99 at most 20 ms: holds",
                 "150.0 ± 7.5 infer/s, p99 16.00 ± 2.48 ms", "throughput +33.3%, p99 -3.50 ms"):
        assert f" {cell} |" in alpha
        assert f'<td class="text">{html.escape(cell)}</td>' in page
    other = md_row(markdown, "x&lt;b>y\\|z")
    assert "| 11.00 ± 1.24 |" in other and "its 40 requests/s completed (within 5%): holds" in other
    assert "Energy is the set's: the server's joules (rapl) are measured for all models together" in markdown
    assert "Energy is the set&#x27;s: the server&#x27;s joules (rapl)" in page


def test_a_baseline_on_other_hardware_is_not_compared_model_by_model(tmp_path):
    h100 = Hardware(host="a", gpu_model="H100", meters=("nvml",))
    a100 = Hardware(host="b", gpu_model="A100", meters=("nvml",))
    markdown, page = render(tmp_path, SHARING, replace(BASELINE, hardware=h100), replace(BEST, hardware=a100))
    assert "| measured on other hardware: does not compare | – |" in md_row(markdown, "alpha")
    assert "throughput +33.3%" not in markdown and "throughput +33.3%" not in page
    assert page.count("<h2>Each model in the chosen set</h2>") == 1  # once, above the hardware groups


def test_the_headline_says_a_set_of_models_shares_one_server_and_its_figures_are_the_sets(tmp_path):
    markdown, page = render(tmp_path, SHARING)
    assert markdown.startswith("## greentune: alpha+x&lt;b>y\\|z (2 models on one server): trial 1 saves")
    words = "A set of 2 models served together on one server (alpha, x"
    assert words in markdown and words in page
    figures = "are the set's (all models' inferences over all the server's joules"
    assert figures in markdown and html.escape(figures) in page
    assert "<h1>greentune report: alpha+x&lt;b&gt;y|z (a set of 2 models on one server)</h1>" in page


def test_sharing_section_names_the_saving_the_basis_and_every_energy_figures_source(tmp_path):
    markdown, page = render(tmp_path, SHARING)
    assert "### What sharing one server saves" in markdown and "<h2>What sharing one server saves</h2>" in page
    # 10 W together against 8 W + 3.9 W separately: 1 - 10 / 11.9 = 16.0% saved
    saving = ("Serving the set on one server saves 16.0% of the power of a server per model: 10.0 W together "
              "against 11.9 W separately at the same rates (rapl energy, idle included).")
    assert saving in markdown and saving in page
    assert "Basis: best: each model ran alone with its config of the chosen set (trial 1)." in markdown
    # 1434 inferences over 60 J in 6 s: 239 infer/s, 10 W, 23.90 infer/J, 41.841 mJ each; 11.9 W apart: 20.08 infer/J
    assert md_row(markdown, "together: all 2 models on one server") == (
        "| together: all 2 models on one server | 239.0 | – | 10.0 (rapl) | – | 23.90 ± 0.99 (rapl) | 41.841 (rapl) |")
    separately = md_row(markdown, "separately: a server per model (each alone, at its rate in the set)")
    assert separately.endswith("| 239.0 | – | 11.9 (rapl) | – | 20.08 (rapl) | 49.791 (rapl) |")
    alpha = md_row(markdown, "alpha alone")
    # 48 J over 1200 inferences = 40 mJ each; 8 W at its 200 infer/s in the set
    for cell in ("200.0", "8.0 (rapl)", "40.000 (rapl)", "25.00 ± 0.25 (rapl)"):
        assert f" {cell} |" in alpha
    assert md_row(markdown, "x&lt;b>y\\|z alone")
    assert html.escape(SHARING_NOTE.split(":")[0]) in page


def test_sharing_off_says_not_measured(tmp_path):
    markdown, page = render(tmp_path, None)
    for text in (markdown, page):
        assert "not measured (--sharing off)" in text
    assert "| together:" not in markdown and 'class="sharing"' not in page


@pytest.mark.parametrize("sharing, expected", [
    ({"basis": "baseline", "saving_fraction": None, "reason": "the baseline was not measured: nothing to compare",
      "note": SHARING_NOTE}, "Saving: unknown (the baseline was not measured: nothing to compare)."),
    (sharing_summary("best", 1, CHOSEN, BEST.measurement,
                     {"alpha": alone("alpha", CHOSEN.of("alpha"), 200.0, 48.0), FANCY: "refused to load"}),
     "Saving: unknown (a model could not be measured alone)."),
])
def test_an_unknown_saving_gives_its_reason(tmp_path, sharing, expected):
    markdown, page = render(tmp_path, sharing)
    assert expected in markdown and html.escape(expected) in page
    if "alone" in sharing:
        assert "x&lt;b>y\\|z could not be measured alone: refused to load." in markdown
        assert md_row(markdown, "x&lt;b>y\\|z alone").startswith("| x&lt;b>y\\|z alone | could not be measured |")


def test_a_model_name_with_markup_is_shown_as_written_everywhere(tmp_path):
    markdown, page = render(tmp_path, SHARING)
    assert FANCY not in markdown and "x&lt;b>y\\|z" in markdown
    assert "x<b>y" not in page and "x&lt;b&gt;y|z" in page
    assert "<th>x&lt;b&gt;y|z/instance_count</th>" in page  # the trials table: a set's knobs per model
    # Plotly reads hover text as HTML (a <b> would turn bold): the plots' text carries the name escaped too
    data = load_report_data(tmp_path)
    hovers = [str(text) for fig in (plots.pareto_figure(data), plots.progress_figure(data))
              for trace in fig.data for text in (trace.text or ())]
    assert hovers and all(FANCY not in text for text in hovers)
    assert any("x&lt;b&gt;y|z: instance_count=1" in text for text in hovers)


def test_limits_say_which_hold_which_break_and_which_were_not_measured():
    load = {"mode": "request_rate", "request_rate_per_s": 40}
    words = member_limits({"max_p99_ms": 10, "min_throughput_per_s": 50},
                          {"max_p99_ms": 0.25, "min_throughput": -0.1, "request_rate": 1000.0}, load)
    assert words == ("throughput at least 50 infer/s: holds; p99 at most 10 ms: broken by 25%; "
                     "its 40 requests/s completed (within 5%): not measured")
    assert member_limits({"max_p99_ms": None}, {}, {}) == "none"


def test_one_models_report_has_no_set_sections(tmp_path):
    _, markdown, page = documents(tmp_path, [EFFICIENT, FAST, TOO_SLOW_P99], "efficiency")
    for text in (markdown, page):
        assert "Each model in the chosen set" not in text and "What sharing one server saves" not in text
        assert "models served together" not in text and "sharing off" not in text
    assert "<th>instance_count</th>" in page and "/instance_count" not in page
    assert "<h1>greentune report: mlp</h1>" in page
