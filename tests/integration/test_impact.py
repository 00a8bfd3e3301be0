"""A real search with impact inputs: the annual sentence in stdout and report.md, per-million figures for every trial."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli

pytestmark = pytest.mark.integration


def test_search_with_traffic_reports_the_year_and_per_million_figures(tmp_path):
    space = tmp_path / "space.yaml"
    # the YAML block gives traffic and PUE; the flags give carbon and price and override the block's carbon
    space.write_text("knobs:\n  instance_kind: KIND_CPU\n  instance_count: {type: int, low: 1, high: 2}\n"
                     "  dynamic_batching: {type: bool}\nimpact:\n  traffic: 1.728e8/day\n  carbon_intensity: 100\n"
                     "  pue: 1.2\n")
    out = tmp_path / "out"
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", str(space), "-c", "4",
                      *FAST_FLAGS, "--trials", "3", "--max-p99-ms", "500", "-o", str(out),
                      "--carbon-intensity", "400", "--energy-price", "0.15", "--currency", "EUR",
                      "--gpu-hourly-price", "2.5"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    impact = summary["impact"]
    assert impact["inputs"]["traffic_per_s"] == pytest.approx(2000)
    assert impact["inputs"]["sources"]["traffic"] == f"{space}: impact.traffic"
    assert impact["inputs"]["sources"]["carbon_intensity"] == "--carbon-intensity"
    assert impact["inputs"]["carbon_intensity_g_per_kwh"] == 400 and impact["inputs"]["pue"] == 1.2

    # per-million figures for every trial, consistent with the measured energy per inference
    rows = {row["trial"]: row for row in impact["per_million_inferences"]}
    trials = pd.read_csv(out / "trials.csv")
    # trial numbers may skip (a duplicate proposal is reused, not measured), so compare with trials.csv
    assert len(rows) == summary["trial_count"] == len(trials) and sorted(rows) == sorted(trials["trial"])
    for _, trial in trials.iterrows():
        row = rows[int(trial["trial"])]
        expected_kwh = trial["energy_per_inference_mj"] / 1000 * 1e6 / 3.6e6 * 1.2
        assert row["energy_kwh_per_million"] == pytest.approx(expected_kwh, rel=1e-6)
        assert row["carbon_g_per_million"] == pytest.approx(expected_kwh * 400, rel=1e-6)
        assert trial["energy_kwh_per_million"] == pytest.approx(expected_kwh, rel=1e-6)
        assert trial["energy_cost_per_million"] == pytest.approx(expected_kwh * 0.15, rel=1e-6)

    annual = impact["annual"]
    best = summary["best"]["measurement"]
    chosen = annual["configs"]["chosen"]
    assert chosen["energy_kwh_per_year"] == pytest.approx(
        best["energy_per_inference_j"] * 2000 * 31_536_000 / 3.6e6 * 1.2, rel=1e-6)
    assert chosen["machines"] >= 1 and annual["configs"]["fastest"] is not None
    sentence = annual["sentence"]
    assert "2,000 inferences/s" in sentence
    if summary["best"]["trial"] == summary["baseline"]["trial"]:
        assert "The model's own config (trial 0) stays" in sentence
    elif annual["chosen_vs_baseline"]["tie"]:
        assert "a tie, so no yearly saving is claimed" in sentence
    else:
        assert "kg CO2e (at 400 gCO2e/kWh)" in sentence and "EUR of energy (at 0.15 EUR/kWh) a year" in sentence

    assert "per year:" in result.stdout and sentence.split(";")[0][:60] in " ".join(result.stdout.split())
    report_md = (out / "report.md").read_text()
    assert f"Per year: {sentence}" in report_md
    report_html = (out / "report.html").read_text()
    assert "Energy, carbon and cost at your traffic" in report_html and "kg CO2e / year" in report_html
    provenance = report_html.split("<h2>Provenance</h2>")[1]
    assert "&quot;mode&quot;" not in provenance and '{"mode"' not in provenance  # in words, not JSON
    assert "closed loop, 4 requests in flight" in report_html and "carbon intensity 400 gCO2e/kWh" in report_html
    assert triton_processes() == []
