"""Both picks (most efficient, fastest feasible) and the energy price of speed in summary.json and the reports.

Built from hand-made trial results, no server: the documents are pure functions of what was measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MODEL_REPOSITORY
from tests.unit.test_objective import C, measurement
from tuner.bench import LoadPolicy
from tuner.job import SearchJob
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings
from tuner.model_config import load_model_config
from tuner.objective import violations
from tuner.outputs import summary_document
from tuner.report.data import ReportData
from tuner.report.html import render_html
from tuner.report.markdown import render_markdown
from tuner.results import TrialConfig, TrialResult, clean_json
from tuner.search import SearchOutcome
from tuner.space import builtin_space


def trial(number: int, ipj: float, tput: float, p99: float = 5.0) -> TrialResult:
    m = measurement(ipj, p99=p99, tput=tput)
    return TrialResult(number, TrialConfig(instance_count=number + 1), m, None, violations(m, C))


def job(tmp_path: Path, objective: str) -> SearchJob:
    space = builtin_space("cpu")
    assert space is not None
    return SearchJob(model_repository=MODEL_REPOSITORY, model="mlp", base=load_model_config(MODEL_REPOSITORY, "mlp"),
                     space=space, constraints=C, load=LoadPolicy(LoadSpec(concurrency=8)),
                     inputs=InputSource({}),
                     measure=MeasureSettings(), output=tmp_path, objective=objective)


def documents(tmp_path: Path, results: list[TrialResult], objective: str) -> tuple[dict, str, str]:
    from tuner.objective import best_trial

    outcome = SearchOutcome(results=results, baseline=results[0], best=best_trial(results, objective),
                            stop_reason="trial budget reached", storage_url="", study_name="greentune-mlp")
    summary = json.loads(json.dumps(clean_json(summary_document(job(tmp_path, objective), outcome, None))))
    data = ReportData(tmp_path, summary, results)
    return summary, render_markdown(data, None), render_html(data)


EFFICIENT, FAST, TOO_SLOW_P99 = trial(0, 100, 200), trial(1, 50, 400), trial(2, 30, 900, p99=50)


@pytest.mark.parametrize("objective, chosen", [("efficiency", 0), ("throughput", 1)])
def test_summary_holds_both_picks_and_the_price_of_speed_whatever_the_objective(tmp_path, objective, chosen):
    summary, _, _ = documents(tmp_path, [EFFICIENT, FAST, TOO_SLOW_P99], objective)
    assert summary["objective"] == objective
    assert "inferences per " + ("joule" if objective == "efficiency" else "second") in summary["objective_description"]
    assert summary["best"]["trial"] == chosen  # the exported config is the chosen objective's pick
    picks = summary["picks"]
    assert set(picks) == {"most_efficient", "fastest", "price_of_speed"}
    assert picks["most_efficient"]["trial"] == 0 and picks["fastest"]["trial"] == 1  # trial 2 breaks max p99
    price = picks["price_of_speed"]
    # 10 mJ vs 20 mJ per inference; 2 W vs 8 W (energy over the windows / their duration)
    assert price["extra_energy_per_inference_mj"] == pytest.approx(10.0)
    assert price["extra_power_w"] == pytest.approx(6.0)
    assert price["same_config"] is False and price["energy_source"] == "estimated"


@pytest.mark.parametrize("objective", ["efficiency", "throughput"])
def test_reports_show_both_picks_side_by_side_with_the_price_of_speed(tmp_path, objective):
    _, markdown, page = documents(tmp_path, [EFFICIENT, FAST, TOO_SLOW_P99], objective)
    for text in (markdown, page):
        assert "Most efficient vs fastest feasible config" in text
        assert "+10.000 mJ per inference and +6.0 W (estimated, total energy)" in text
        assert "+200 infer/s" in text
    expected_row = "| trial | 0 | 1 (exported) |" if objective == "throughput" else "| trial | 0 (exported) | 1 |"
    assert expected_row in markdown
    assert "| mJ / inference | 10.000 | 20.000 |" in markdown
    words = "the fastest feasible config" if objective == "throughput" else "the most efficient feasible config"
    assert f"Chosen (--objective {objective}: {words}): trial {0 if objective == 'efficiency' else 1}" in markdown


def test_reports_say_same_config_when_one_config_is_both_picks(tmp_path):
    both = trial(0, 100, 500)
    summary, markdown, page = documents(tmp_path, [both, trial(1, 50, 400)], "throughput")
    assert summary["picks"]["most_efficient"]["trial"] == summary["picks"]["fastest"]["trial"] == 0
    assert summary["picks"]["price_of_speed"]["same_config"] is True
    for text in (markdown, page):
        assert "Same config: trial 0 is both the most efficient and the fastest feasible config" in text


def test_no_feasible_config_leaves_both_picks_empty(tmp_path):
    summary, markdown, _ = documents(tmp_path, [TOO_SLOW_P99], "efficiency")
    assert summary["picks"] == {"most_efficient": None, "fastest": None, "price_of_speed": None}
    assert "No feasible config, so neither pick exists." in markdown


def test_the_objective_is_recorded_and_resume_with_another_is_refused(tmp_path):
    from tuner.errors import BadInput
    from tuner.job import SearchSettings
    from tuner.study import StudyStore

    study = StudyStore.open(job(tmp_path, "efficiency"), SearchSettings()).study
    assert study.user_attrs["settings"]["objective"] == "efficiency"
    with pytest.raises(BadInput, match=r"--resume: the study was run with different objective \(objective=efficiency\)"):
        StudyStore.open(job(tmp_path, "throughput"), SearchSettings(resume=True))
    again = StudyStore.open(job(tmp_path, "efficiency"), SearchSettings(resume=True)).study
    assert again.study_name == study.study_name


def test_a_study_recorded_before_objectives_existed_resumes_as_efficiency(tmp_path):
    from tuner.errors import BadInput
    from tuner.job import SearchSettings
    from tuner.study import StudyStore

    study = StudyStore.open(job(tmp_path, "efficiency"), SearchSettings()).study
    old = {k: v for k, v in study.user_attrs["settings"].items() if k != "objective"}
    study.set_user_attr("settings", old)
    StudyStore.open(job(tmp_path, "efficiency"), SearchSettings(resume=True))
    with pytest.raises(BadInput, match="different objective"):
        StudyStore.open(job(tmp_path, "throughput"), SearchSettings(resume=True))


def test_unknown_objective_in_a_job_is_bad_input(tmp_path):
    from tuner.errors import BadInput

    with pytest.raises(BadInput, match="--objective fast: expected one of efficiency, throughput"):
        job(tmp_path, "fast")


def test_cli_line_for_the_price_of_speed_names_units_and_source():
    from tuner.objective import price_of_speed
    from tuner.terminal import price_text

    assert price_text(price_of_speed(EFFICIENT, FAST)) == (
        "price of speed: the fastest feasible config (trial 1) runs +200 infer/s vs the most efficient (trial 0) "
        "at +10.000 mJ per inference, +6.0 W (estimated, total energy)")
    assert "the same config (trial 0)" in price_text(price_of_speed(EFFICIENT, EFFICIENT))


def test_baseline_chosen_for_throughput_says_nothing_was_faster(tmp_path):
    _, markdown, _ = documents(tmp_path, [trial(0, 50, 900), trial(1, 100, 200)], "throughput")
    assert "This is the model's own config: no measured config was faster." in markdown
