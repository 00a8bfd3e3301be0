"""Hardware is part of the result: every TrialResult names what it was measured on, and the summary and reports of a
study that spans GPU models or meters (--allow-mixed-hardware) group the trials and never compare joules across groups.

Built from a real journal study filled by fake benches (no server), read back by `greentune report --storage --study`."""

from __future__ import annotations

import json
import re

import optuna
from click.testing import CliRunner

from tests.unit.test_search_loop import BASE, FakeBench, efficiency, make_job
from tests.unit.test_shared_study import FAST, GpuBench
from tuner.cli import cli
from tuner.job import SearchSettings
from tuner.model_config import trial_of
from tuner.outputs import summary_document
from tuner.results import Hardware, TrialResult
from tuner.search import Search
from tuner.storage import open_storage
from tuner.study import BUDGET_ATTR

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"


class FastGpu(GpuBench):
    """A100 joules ten times lower than the H100's: a cross-group comparison would pick and praise an A100 trial.
    The baseline config is the least efficient, so every group's best beats it."""

    def __init__(self, gpu: str, scale: float) -> None:
        super().__init__(gpu)
        self.ipj = lambda config: (1.0 if config == trial_of(BASE) else efficiency(config)) * scale


def worker(tmp_path, url: str, name: str, bench: FakeBench, allow_mixed: bool = False) -> None:
    settings = SearchSettings(trials=3, storage=url, study="s", heartbeat=FAST, poll_s=0.05,
                              allow_mixed_hardware=allow_mixed)
    job = make_job(tmp_path / name)
    search = Search(job, settings)
    store = search.open()
    search.on_result = lambda outcome: store.save_summary(summary_document(job, outcome, None))
    search.run(bench)


def report_from_study(tmp_path, url: str) -> tuple[dict, str, str]:
    result = CliRunner().invoke(cli, ["report", "--storage", url, "--study", "s", "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "report"
    return (json.loads((folder / "summary.json").read_text()), (folder / "report.html").read_text(),
            (folder / "report.md").read_text())


def mixed_study(tmp_path) -> str:
    """Three trials on an H100 (the baseline among them), then three more on an A100 (allowed to mix)."""
    url = f"journal://{tmp_path / 'study.journal'}"
    worker(tmp_path, url, "h100", FastGpu(H100, 1.0))
    optuna.load_study(study_name="s", storage=open_storage(url)).set_user_attr(BUDGET_ATTR, 6)
    worker(tmp_path, url, "a100", FastGpu(A100, 10.0), allow_mixed=True)
    return url


def measured(tmp_path) -> list[TrialResult]:
    """The trial records the report wrote from the study, by number."""
    records = (tmp_path / "report" / "trials").glob("trial-*.json")
    return sorted((TrialResult.from_dict(json.loads(p.read_text())["trial"]) for p in records), key=lambda r: r.number)


def numbers(results: list[TrialResult], gpu: str) -> list[int]:
    """Trial numbers measured on this GPU (the shared sampler is unseeded: a duplicate proposal skips a number)."""
    return [r.number for r in results if r.hardware is not None and r.hardware.gpu_model == gpu]


def test_each_trial_record_and_study_result_names_its_hardware_and_old_records_still_load(tmp_path):
    url = mixed_study(tmp_path)
    summary, _, _ = report_from_study(tmp_path, url)
    results = measured(tmp_path)
    assert len(results) == 6
    assert [r.hardware.gpu_model for r in results] == [H100] * 3 + [A100] * 3
    assert {(r.hardware.gpu_driver, r.hardware.meters) for r in results} == {("550.54", ("nvml",))}
    assert all(r.hardware.host for r in results)
    assert summary["best"]["trial"] in numbers(results, A100)  # the study's own pick crosses groups (A100 "wins")
    old = {k: v for k, v in results[0].to_dict().items() if k != "hardware"}  # a record from before hardware
    assert TrialResult.from_dict(old).hardware is None
    assert Hardware.from_dict(results[0].hardware.to_dict()) == results[0].hardware


def test_mixed_hardware_summary_has_a_group_each_with_its_own_best_and_no_cross_group_savings(tmp_path):
    summary, _, _ = report_from_study(tmp_path, mixed_study(tmp_path))
    # materialize_study rewrote the stored summary: what the last worker saw, over both groups
    groups, results = summary["hardware_groups"], measured(tmp_path)
    on_h100, on_a100 = numbers(results, H100), numbers(results, A100)
    assert [(g["gpu_model"], g["meters"], g["trials"]) for g in groups] == [(H100, ["nvml"], on_h100),
                                                                             (A100, ["nvml"], on_a100)]
    h100, a100 = groups
    assert h100["baseline"]["trial"] == 0 and a100["baseline"] is None  # the baseline config was measured once
    assert h100["best"]["trial"] in on_h100 and a100["best"]["trial"] in on_a100
    assert h100["savings_vs_baseline"]["energy_per_inference_j_chosen"] == \
        h100["best"]["measurement"]["energy_per_inference_j"]
    assert a100["savings_vs_baseline"] is None
    assert summary["savings_vs_baseline"] is None  # the chosen trial is an A100's, the baseline an H100's
    assert summary["hardware_note"].startswith("trials were measured on 2 hardware groups")
    assert "do not compare" in summary["hardware_note"]
    assert summary["picks"]["most_efficient"]["trial"] in on_a100  # picks stay within the chosen trial's group
    assert summary["picks"]["fastest"]["trial"] in on_a100
    assert set(summary["ties_with_best"]) <= set(on_a100)


def test_mixed_hardware_reports_have_a_section_per_group_and_say_the_groups_do_not_compare(tmp_path):
    summary, page, markdown = report_from_study(tmp_path, mixed_study(tmp_path))
    h100_best, a100_best = (g["best"]["trial"] for g in summary["hardware_groups"])
    for text in (page, markdown):
        assert "measured on 2 hardware groups that do not compare" in text
        assert "Joules measured on different GPUs or meters do not compare" in text
        assert f"Hardware group 1: GPU {H100}, meters nvml" in text
        assert f"Hardware group 2: GPU {A100}, meters nvml" in text
        assert f"Best on this hardware (--objective efficiency: the most efficient feasible config): trial {h100_best}" in text
        assert f"Best on this hardware (--objective efficiency: the most efficient feasible config): trial {a100_best}" in text
        # the A100 group is never compared with the H100 baseline; the H100 group's best is, within its group
        assert "the baseline was not measured on this hardware, so no saving is given" in text
        savings = re.findall(r"GPU (NVIDIA [^,]+), meters nvml: trial (\d+) saves", text)
        assert all(gpu == H100 and int(n) == h100_best for gpu, n in savings) and savings
    assert page.count('<section class="hardware-group">') == 2
    assert markdown.count("### Hardware group ") == 2
    assert "(best on this hardware)" in markdown


def test_a_single_hardware_group_renders_as_before_with_one_line_naming_it(tmp_path):
    url = f"journal://{tmp_path / 'study.journal'}"
    worker(tmp_path, url, "h100", FastGpu(H100, 1.0))
    summary, page, markdown = report_from_study(tmp_path, url)
    assert len(summary["hardware_groups"]) == 1 and summary["hardware_note"] is None
    assert summary["savings_vs_baseline"] is not None
    for text in (page, markdown):
        assert "Hardware group" not in text and "do not compare" not in text
        assert f"GPU {H100}, meters nvml (driver 550.54; host " in text
        assert "Chosen (--objective efficiency" in text
    assert '<section class="hardware-group">' not in page and "<h2>All trials</h2>" in page


def test_pareto_front_and_ties_compare_only_trials_on_the_same_hardware():
    from tests.unit.test_search_loop import fake_measurement
    from tuner.objective import pareto_front, ties_with
    from tuner.results import TrialConfig

    def on(gpu: str, number: int, ipj: float) -> TrialResult:
        config = TrialConfig(instance_count=number + 1)
        return TrialResult(number, config, fake_measurement(config, ipj), hardware=Hardware("h", None, gpu, "550.54",
                                                                                            ("nvml",)))

    slow_h100, fast_a100, worse_a100 = on(H100, 0, 10.0), on(A100, 1, 100.0), on(A100, 2, 50.0)
    assert pareto_front([slow_h100, fast_a100, worse_a100]) == [0, 1]  # the A100 dominates nothing on the H100
    twin_h100 = on(H100, 3, 100.0)  # same inferences per joule as the A100's best, other hardware: not a tie
    assert ties_with(fast_a100, [slow_h100, fast_a100, worse_a100, twin_h100]) == []
    assert ties_with(fast_a100, [fast_a100, on(A100, 4, 100.0)]) == [4]
