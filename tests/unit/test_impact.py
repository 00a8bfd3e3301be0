"""Impact arithmetic (units, rounding, ties), the impact: block and flags, summary/trials.csv figures, report words."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.conftest import MODEL_REPOSITORY
from tuner.cli import cli
from tuner.errors import BadInput
from tuner.impact import (
    SECONDS_PER_YEAR,
    ImpactInputs,
    annual,
    annual_summary,
    impact_summary,
    machines_needed,
    parse_traffic,
    per_million,
    resolve_inputs,
    significant,
)
from tuner.objective import Constraints, fastest_trial, violations
from tuner.outputs import trials_frame
from tuner.results import Measurement, Spread, TrialConfig, TrialResult
from tuner.space import parse_space

REPO = str(MODEL_REPOSITORY)
FULL = ImpactInputs(traffic_per_s=2000, carbon_intensity_g_per_kwh=400, energy_price_per_kwh=0.15, currency="EUR",
                    sources={"traffic": "--traffic", "carbon_intensity": "--carbon-intensity",
                             "energy_price": "--energy-price", "currency": "--currency"})


def measurement(mj: float, tput: float, ipj_sd: float = 0.0, n: int = 3) -> Measurement:
    """A measurement with `mj` millijoules per inference and `tput` infer/s over 6 s."""
    success = int(tput * 6)
    energy = success * mj / 1000
    return Measurement(
        config=TrialConfig(), load={"mode": "concurrency", "concurrency": 8}, throughput_per_s=Spread(tput, 0.0, n),
        p50_ms=2.0, p95_ms=3.0, p99_ms=Spread(4.0, 0.0, n), energy_j=energy, energy_source="estimated",
        energy_domains_j={"cpu": energy}, inferences_per_j=Spread(1000 / mj, ipj_sd, n), memory_mb=100.0,
        memory_source="RSS of server processes", success_count=success, failure_count=0, duration_s=6.0, stable=True)


def result(number: int, m: Measurement | None) -> TrialResult:
    return TrialResult(number, TrialConfig(instance_count=number + 1), m, None if m else "failed",
                       violations(m, Constraints()))


# --- arithmetic -------------------------------------------------------------------------------------------

def test_per_million_units_and_pue():
    # 3.6 J per inference = 1 Wh; a million of them = 1 kWh
    figures = per_million(3.6, FULL)
    assert figures.energy_kwh == pytest.approx(1.0)
    assert figures.carbon_g == pytest.approx(400.0)
    assert figures.energy_cost == pytest.approx(0.15)
    assert "400 gCO2e/kWh" in figures.made_from and "0.15 EUR/kWh" in figures.made_from
    assert per_million(3.6, ImpactInputs(pue=1.5)).energy_kwh == pytest.approx(1.5)


def test_no_carbon_or_cost_without_their_inputs():
    figures = per_million(3.6, ImpactInputs(traffic_per_s=10))
    assert figures.carbon_g is None and figures.energy_cost is None
    year = annual(0, 3.6, 100.0, ImpactInputs(traffic_per_s=10))
    assert year.carbon_kg_per_year is None and year.energy_cost_per_year is None and year.machines is None


def test_annual_is_energy_x_traffic_x_seconds_per_year_x_pue():
    inputs = ImpactInputs(traffic_per_s=2000, carbon_intensity_g_per_kwh=400, energy_price_per_kwh=0.15, pue=1.2,
                          machine_price_per_hour=2.0)
    year = annual(3, 0.004, 1500.0, inputs)  # 4 mJ per inference
    kwh = 0.004 * 2000 * SECONDS_PER_YEAR / 3.6e6 * 1.2
    assert SECONDS_PER_YEAR == 31_536_000
    assert year.energy_kwh_per_year == pytest.approx(kwh) == pytest.approx(84.096)
    assert year.carbon_kg_per_year == pytest.approx(kwh * 0.4)
    assert year.energy_cost_per_year == pytest.approx(kwh * 0.15)
    assert year.machines == 2  # 2000 / 1500 rounded up
    assert year.machine_cost_per_year == pytest.approx(2 * 2.0 * 8760)


def test_machines_round_up_but_not_for_float_noise():
    assert machines_needed(2000, 1000) == 2
    assert machines_needed(2000, 999.9) == 3
    assert machines_needed(0.3 * 3, 0.3) == 3  # 0.8999999 / 0.3 is 3, not 4
    assert machines_needed(1, 5000) == 1


def test_significant_rounding():
    assert significant(1234567) == "1,230,000"
    assert significant(84.096) == "84.1"
    assert significant(0.0123456) == "0.0123"
    assert significant(0) == "0"
    assert significant(-5.5555) == "-5.56"


@pytest.mark.parametrize("text, per_s", [("2000", 2000.0), ("2000/s", 2000.0), ("1.728e8/day", 2000.0),
                                         ("120000/min", 2000.0), ("7.2e6/h", 2000.0), (" 86400 / days ", 1.0),
                                         (2000, 2000.0)])
def test_traffic_units(text, per_s):
    assert parse_traffic(text, "--traffic") == pytest.approx(per_s)


@pytest.mark.parametrize("text, message", [("0", "above zero"), ("-5", "above zero"), ("100/week", "unknown unit"),
                                           ("lots", "expected a number"), ("nan", "above zero"), (True, "expected")])
def test_bad_traffic_names_the_flag(text, message):
    with pytest.raises(BadInput, match=message) as info:
        parse_traffic(text, "--traffic")
    assert str(info.value).startswith("--traffic: ") and "\n" not in str(info.value)


# --- annual comparison and ties ---------------------------------------------------------------------------

def test_saving_sentence_names_every_input_and_the_fastest_is_recorded():
    base, chosen, fast = result(0, measurement(8.0, 1000)), result(1, measurement(4.0, 1500)), result(2, measurement(6.0, 3000))
    yearly = annual_summary([base, chosen, fast], chosen, base, FULL)
    assert yearly is not None
    compare = yearly["chosen_vs_baseline"]
    # 4 mJ x 2000/s x 31,536,000 s = 252,288,000 J = 70.08 kWh saved
    assert compare["energy_kwh_saved_per_year"] == pytest.approx(70.08)
    assert compare["carbon_kg_saved_per_year"] == pytest.approx(28.032)
    assert compare["energy_cost_saved_per_year"] == pytest.approx(10.512)
    assert compare["tie"] is False
    assert yearly["configs"]["fastest"]["trial"] == 2
    assert "carbon intensity 400 gCO2e/kWh (--carbon-intensity)" in yearly["made_from"]
    assert "PUE 1 (default)" in yearly["made_from"]
    sentence = yearly["sentence"]
    assert "saves 70.1 kWh, 28.0 kg CO2e (at 400 gCO2e/kWh) and 10.5 EUR of energy (at 0.15 EUR/kWh) a year" in sentence
    assert "2,000 inferences/s" in sentence and "PUE 1" in sentence


def test_overlapping_intervals_are_a_tie_not_a_saving():
    base = result(0, measurement(4.1, 1000, ipj_sd=40))
    chosen = result(1, measurement(4.0, 1000, ipj_sd=40))
    yearly = annual_summary([base, chosen], chosen, base, FULL)
    assert yearly is not None and yearly["chosen_vs_baseline"]["tie"] is True
    assert "a tie, so no yearly saving is claimed" in yearly["sentence"]
    assert "saves" not in yearly["sentence"]


def test_baseline_chosen_and_no_carbon_without_intensity():
    base = result(0, measurement(4.0, 1000))
    inputs = ImpactInputs(traffic_per_s=10, sources={"traffic": "--traffic"})
    yearly = annual_summary([base], base, base, inputs)
    assert yearly is not None
    assert "The model's own config (trial 0) stays" in yearly["sentence"]
    assert "CO2e" not in yearly["sentence"] and "EUR" not in yearly["sentence"]


def test_machines_and_their_cost_in_the_sentence():
    inputs = ImpactInputs(traffic_per_s=2000, machine_price_per_hour=3.0, currency="USD",
                          sources={"traffic": "--traffic", "gpu_hourly_price": "--gpu-hourly-price"})
    base, chosen = result(0, measurement(8.0, 900)), result(1, measurement(4.0, 2100))
    yearly = annual_summary([base, chosen], chosen, base, inputs)
    assert yearly is not None
    assert yearly["configs"]["baseline"]["machines"] == 3 and yearly["configs"]["chosen"]["machines"] == 1
    assert yearly["chosen_vs_baseline"]["machine_cost_saved_per_year"] == pytest.approx(2 * 3.0 * 8760)
    assert "1 machine(s)" in yearly["sentence"] and "52,600 USD a year less" in yearly["sentence"]


def test_impact_summary_has_per_million_for_every_trial_and_no_annual_without_traffic():
    results = [result(0, measurement(8.0, 1000)), result(1, None), result(2, measurement(3.6, 1000))]
    doc = impact_summary(results, results[2], results[0], ImpactInputs())
    assert [row["trial"] for row in doc["per_million_inferences"]] == [0, 1, 2]
    # 3.6 mJ per inference x a million = 3600 J = 0.001 kWh
    assert doc["per_million_inferences"][2]["energy_kwh_per_million"] == pytest.approx(0.001)
    assert doc["per_million_inferences"][1]["energy_kwh_per_million"] is None
    assert doc["per_million_inferences"][2]["carbon_g_per_million"] is None
    assert doc["annual"] is None and doc["inputs"]["pue"] == 1.0


def test_trials_csv_columns_carry_per_million_figures_and_inputs():
    results = [result(0, measurement(8.0, 1000)), result(1, measurement(3.6, 1000))]
    frame = trials_frame(results, results[0], FULL)
    kwh = [8.0 / 3.6 / 1000, 0.001]
    assert list(frame["energy_kwh_per_million"]) == pytest.approx(kwh)
    assert list(frame["carbon_g_per_million"]) == pytest.approx([400 * k for k in kwh])
    assert list(frame["energy_cost_per_million"]) == pytest.approx([0.15 * k for k in kwh])
    assert set(frame["carbon_intensity_g_per_kwh"]) == {400} and set(frame["currency"]) == {"EUR"}


def test_fastest_trial_is_feasible_highest_throughput():
    infeasible = TrialResult(3, TrialConfig(), measurement(1.0, 9000), None, {"failed": 0.0, "max_p99_ms": 0.5})
    results = [result(0, measurement(4.0, 1000)), result(1, measurement(6.0, 3000)), result(2, None), infeasible]
    fastest = fastest_trial(results)
    assert fastest is not None and fastest.number == 1
    assert fastest_trial([result(0, None)]) is None


# --- inputs: YAML block and flags --------------------------------------------------------------------------

def test_yaml_block_with_flags_on_top_and_sources_recorded():
    space = parse_space({"knobs": {"instance_count": {"type": "int", "low": 1, "high": 2}},
                         "impact": {"traffic": "1.728e8/day", "carbon_intensity": 250, "pue": 1.3}}, "s.yaml")
    inputs = resolve_inputs({"carbon_intensity": "400"}, space.impact, space.source)
    assert inputs.traffic_per_s == pytest.approx(2000)
    assert inputs.carbon_intensity_g_per_kwh == 400 and inputs.pue == 1.3
    assert inputs.sources == {"traffic": "s.yaml: impact.traffic", "carbon_intensity": "--carbon-intensity",
                              "pue": "s.yaml: impact.pue"}
    assert space.for_model(False).impact == space.impact
    assert ImpactInputs.from_dict(inputs.to_dict()) == inputs


@pytest.mark.parametrize("block, message", [
    ({"traffic": 0}, "s.yaml: impact.traffic: expected traffic above zero"),
    ({"traffic": "10/fortnight"}, "s.yaml: impact.traffic: unknown unit"),
    ({"carbon_intensity": -1}, "s.yaml: impact.carbon_intensity: expected grams of CO2e per kWh"),
    ({"pue": 0.8}, "s.yaml: impact.pue: expected a PUE from 1.0 to 5"),
    ({"energy_price": "cheap"}, "s.yaml: impact.energy_price: expected a price per kWh"),
    ({"power": 3}, "s.yaml: impact.power: unknown key; valid: traffic"),
    ({"currency": "EUR"}, "s.yaml: impact.currency: a currency labels --energy-price"),
])
def test_bad_yaml_block_names_file_and_key(block, message):
    with pytest.raises(BadInput, match=message.replace(".", r"\.")):
        resolve_inputs({}, block, "s.yaml")


def test_impact_block_must_be_a_mapping():
    with pytest.raises(BadInput, match="s.yaml: impact: expected a mapping"):
        parse_space({"knobs": {"instance_count": 1}, "impact": [1, 2]}, "s.yaml")


@pytest.mark.parametrize("flags, message", [
    (["--traffic", "0"], "--traffic: expected traffic above zero"),
    (["--traffic", "100/week"], "--traffic: unknown unit /week"),
    (["--carbon-intensity", "-400"], "--carbon-intensity: expected grams of CO2e per kWh"),
    (["--energy-price", "abc"], "--energy-price: expected a price per kWh"),
    (["--pue", "0.5"], "--pue: expected a PUE from 1.0 to 5"),
    (["--gpu-hourly-price", "-2"], "--gpu-hourly-price: expected a price per machine-hour"),
    (["--currency", "EUR"], "--currency: a currency labels --energy-price"),
    (["--currency", "euro!", "--energy-price", "1"], "--currency: expected a currency label"),
])
def test_bad_impact_flags_exit_2_with_one_line(flags, message, tmp_path):
    runner = CliRunner()
    got = runner.invoke(cli, ["search", "-r", REPO, "-m", "mlp", "-o", str(tmp_path / "o"), *flags],
                        catch_exceptions=False)
    assert got.exit_code == 2, got.output
    assert message in got.output
    assert len(got.output.strip().splitlines()) == 1 and "Traceback" not in got.output


def test_bad_yaml_block_exits_2_naming_file_and_key(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("knobs:\n  instance_count: {type: int, low: 1, high: 2}\nimpact:\n  traffic: -3\n")
    got = CliRunner().invoke(cli, ["search", "-r", REPO, "-m", "mlp", "--space", str(space), "-o",
                                   str(tmp_path / "o")], catch_exceptions=False)
    assert got.exit_code == 2 and f"{space}: impact.traffic: expected traffic above zero" in got.output


# --- reports: the sentence, the section, provenance in words ------------------------------------------------

def _report_data(tmp_path, inputs: ImpactInputs):
    from tuner.report.data import ReportData

    base, chosen, fast = result(0, measurement(8.0, 1000)), result(1, measurement(4.0, 1500)), result(2, measurement(6.0, 3000))
    results = [base, chosen, fast]
    summary = {
        "model": "mlp", "best": {"trial": 1}, "baseline": {"trial": 0}, "energy_sources": ["estimated"],
        "savings_vs_baseline": {"within_spread": False}, "load": {"mode": "concurrency", "concurrency": 32},
        "constraints": {"min_throughput_per_s": None, "max_p99_ms": 50.0, "max_memory_mb": None},
        "meters": {"estimate": {"name": "estimate", "tdp_w": 20.0, "tdp_basis": "10 W per logical core",
                                "logical_cores": 2, "idle_fraction": 0.2}},
        "idle_power_w": {"cpu": 4.1}, "idle_power_total_w": 4.1, "energy_accounting": "total",
        "study": {"storage": "sqlite:///out/study.db", "name": "greentune-mlp"}, "environment": {},
        "impact": impact_summary(results, chosen, base, inputs),
    }
    return ReportData(tmp_path, summary, results)


def test_report_headline_section_and_provenance_in_words(tmp_path):
    from tuner.report.data import headline
    from tuner.report.impact_view import impact_section
    from tuner.report.markdown import render_markdown
    from tuner.report.words import provenance_items

    data = _report_data(tmp_path, FULL)
    sentence = data.summary["impact"]["annual"]["sentence"]
    assert f"Per year: {sentence}" in headline(data).lines
    assert f"- Per year: {sentence}" in render_markdown(data, None)
    section = impact_section(data)
    for role in ("chosen (most inferences per joule)", "fastest (highest throughput)", "baseline (the model"):
        assert role in section
    assert "kg CO2e / year" in section and "energy EUR / year" in section
    words = provenance_items(data.summary)
    assert words["load"] == "every config driven the same way: closed loop, 32 requests in flight"
    assert words["constraints"] == "p99 latency at most 50 ms; no throughput floor, no memory limit"
    assert words["idle power"].startswith("4.1 W in total (cpu 4.1 W), server up, no load")
    assert "TDP 20 W for 2 logical cores, from 10 W per logical core" in words["meters"]
    assert words["study"] == "Optuna study 'greentune-mlp' stored in sqlite:///out/study.db"
    assert "carbon intensity 400 gCO2e/kWh (from --carbon-intensity)" in words["impact inputs"]
    assert not any(v.startswith("{") for v in words.values())


def test_report_without_carbon_intensity_shows_no_carbon_figure(tmp_path):
    from tuner.report.impact_view import impact_section

    inputs = ImpactInputs(traffic_per_s=2000, energy_price_per_kwh=0.2, currency="USD",
                          sources={"traffic": "--traffic", "energy_price": "--energy-price", "currency": "--currency"})
    data = _report_data(tmp_path, inputs)
    section = impact_section(data)
    assert "CO2e" not in section.split("<p class=\"muted\">Inputs")[0]
    assert "no carbon intensity: no carbon figures" in section
    assert "CO2e" not in data.summary["impact"]["annual"]["sentence"]
