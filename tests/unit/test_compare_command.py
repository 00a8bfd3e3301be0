"""greentune compare without a server: its flags and configs checked before anything starts (one line, exit 2),
and the interleaved pair loop on a fake bench (random order, stop when resolved, at --max-pairs, or on the budget;
a config Triton refuses is bad input naming its flag)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.cli import cli
from tuner.compare import CompareJob, config_source, measure_pairs, parse_fraction
from tuner.errors import BadInput, ModelLoadError
from tuner.model_config import load_model_config, to_text

from .test_search_loop import MODEL_REPOSITORY, fake_measurement, trial_of

BASE = load_model_config(MODEL_REPOSITORY, "mlp")


def flags(tmp_path: Path, **changes: object) -> dict[str, object]:
    """compare's flags as click hands them over, with a baseline and a candidate file written."""
    baseline, candidate = tmp_path / "baseline.pbtxt", tmp_path / "candidate.pbtxt"
    baseline.write_text(to_text(BASE))
    batching = load_model_config(MODEL_REPOSITORY, "mlp")
    batching.dynamic_batching.max_queue_delay_microseconds = 100
    candidate.write_text(to_text(batching))
    values: dict[str, object] = {
        "model_repository": MODEL_REPOSITORY, "model": "mlp", "baseline": baseline, "candidate": candidate,
        "output": tmp_path / "out", "pairs": 3, "max_pairs": 10, "max_regression": "5%", "budget": "15m",
        "inconclusive": "fail", "seed": 0, "min_throughput": None, "max_p99_ms": None, "max_memory_mb": None,
        "concurrency": "4", "request_rate": None, "request_timeout": 30.0, "load_generator": "builtin",
        "perf_analyzer": None, "shape": (), "input_data": None, "energy_meter": "estimate", "cpu_tdp_watts": None,
        "gpus": None, "warmup": 1.0, "window": 1.0, "max_windows": 4, "stability": 0.1, "idle_seconds": 0.0,
        "energy_accounting": "total", "max_failure_rate": 0.05, "launcher": "local", "tritonserver": None,
        "url": None, "image": None, "docker_host": None, "shm_size": "1g", "network": "host",
        "ready_timeout": 120.0, "ports": None,
    }
    values.update(changes)
    return values


def test_the_configs_a_compare_takes(tmp_path):
    job = CompareJob.from_flags(flags(tmp_path))
    assert job.candidate.config.dynamic_batching.max_queue_delay_microseconds == 100
    assert job.baseline.config == BASE and job.max_regression == 0.05 and job.min_pairs == 3
    folder = config_source("--candidate", MODEL_REPOSITORY / "mlp", MODEL_REPOSITORY, "mlp")  # a model folder
    assert folder.config == BASE
    version = tmp_path / "repo" / "mlp" / "2"
    version.mkdir(parents=True)
    (tmp_path / "repo" / "mlp" / "config.pbtxt").write_text(to_text(BASE))
    served = config_source("--candidate", version, tmp_path / "repo", "mlp").config  # a version folder in -r
    assert list(served.version_policy.specific.versions) == [2] and served.max_batch_size == BASE.max_batch_size
    second = tmp_path / "second"  # a second repository: the same model files, another config.pbtxt
    shutil.copytree(MODEL_REPOSITORY / "mlp", second / "mlp", ignore=shutil.ignore_patterns("__pycache__"))
    (second / "mlp" / "config.pbtxt").write_text(to_text(BASE).replace("max_batch_size: 32", "max_batch_size: 8"))
    assert config_source("--candidate", second, MODEL_REPOSITORY, "mlp").config.max_batch_size == 8
    (second / "mlp" / "1" / "model.py").write_text("# another model\n")
    with pytest.raises(BadInput, match=r"^--candidate .*second: its mlp differs from -r's in 1/model.py; compare"):
        config_source("--candidate", second, MODEL_REPOSITORY, "mlp")
    bare = tmp_path / "bare.pbtxt"  # as `git show main:model_repository/mlp/config.pbtxt > bare.pbtxt` without name
    bare.write_text(to_text(BASE).replace('name: "mlp"\n', ""))
    assert config_source("--baseline", bare, MODEL_REPOSITORY, "mlp").config.name == "mlp"


@pytest.mark.parametrize(("change", "message"), [
    ({"candidate": Path("/nonexistent/config.pbtxt")}, "--candidate /nonexistent/config.pbtxt: no such file"),
    ({"max_regression": "five"}, "--max-regression five: expected a percentage like 5%"),
    ({"max_regression": "150%"}, "--max-regression 150%: expected 0% to 99%"),
    ({"pairs": 1}, "--pairs: expected at least 2 pairs"),
    ({"max_pairs": 2}, "--max-pairs: expected at least --pairs (3), got 2"),
    ({"budget": "soon"}, "--budget soon: expected a duration"),
    ({"concurrency": "auto"}, "--concurrency auto is only for search"),
])
def test_bad_input_is_one_line_naming_the_flag(tmp_path, change, message):
    with pytest.raises(BadInput, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        CompareJob.from_flags(flags(tmp_path, **change))


def test_a_candidate_for_another_model_is_refused_at_the_cli_with_exit_2(tmp_path):
    other = tmp_path / "other.pbtxt"
    other.write_text(to_text(BASE).replace('name: "mlp"', 'name: "resnet"'))
    result = CliRunner().invoke(cli, ["compare", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--baseline",
                                      str(MODEL_REPOSITORY / "mlp" / "config.pbtxt"), "--candidate", str(other),
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: --candidate {other}: a config for model 'resnet', not "
                                                  "--model mlp"]
    assert parse_fraction("0.1") == 0.1


class PairBench:
    """Measures a config instantly: energy per inference from `ipj(config)` x the drift of the n-th measurement."""

    def __init__(self, ipj, drift=lambda n: 1.0, refuse=None, clock=None) -> None:
        self.ipj, self.drift, self.refuse, self.clock = ipj, drift, refuse, clock
        self.loaded: list[int] = []

    def measure_config(self, config):
        if self.refuse is not None and config == self.refuse:
            raise ModelLoadError("Triton refused to load mlp: KIND_GPU needs a GPU")
        if self.clock is not None:
            self.clock.now += 60.0
        self.loaded.append(config.dynamic_batching.max_queue_delay_microseconds)
        return fake_measurement(trial_of(config), self.ipj(config) / self.drift(len(self.loaded)))


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def batching(config) -> float:
    return 110.0 if config.HasField("dynamic_batching") else 100.0  # the candidate: 9% less energy per inference


def test_pairs_run_in_random_order_and_stop_once_resolved(tmp_path):
    job = CompareJob.from_flags(flags(tmp_path))
    bench = PairBench(batching, drift=lambda n: 1.0 + 0.02 * n)  # a steady drift: both orders cancel it
    comparison = measure_pairs(job, bench)
    assert len(comparison.pairs) == 3 and comparison.verdict == "pass" and comparison.exit_code == 0
    assert comparison.stop_reason == "resolved after 3 pairs"
    orders = {p.order for seed in range(8) for p in measure_pairs(dataclasses.replace(job, seed=seed),
                                                                   PairBench(batching)).pairs}
    assert orders == {"AB", "BA"}
    energy = comparison.ratios()["energy_per_inference_j"]
    assert energy.ratio == pytest.approx(100 / 110, rel=0.05) and not math.isnan(energy.low)


def test_an_unresolved_comparison_adds_pairs_until_max_pairs_or_the_budget(tmp_path):
    job = CompareJob.from_flags(flags(tmp_path, max_pairs=5))
    noisy = PairBench(lambda c: 100.0, drift=lambda n: 1.0 + (0.3 if n % 4 == 1 else -0.2))  # straddles 5%
    comparison = measure_pairs(job, noisy)
    assert len(comparison.pairs) == 5 and comparison.stop_reason == "--max-pairs 5 reached"
    assert comparison.verdict == "inconclusive" and comparison.exit_code == 5
    clock = Clock()  # 60 s a measurement, 120 s a pair: 3 pairs (the minimum) fit a 5 min budget, a 4th would not
    timed = measure_pairs(CompareJob.from_flags(flags(tmp_path, budget="5m")),
                          PairBench(lambda c: 100.0, drift=noisy.drift, clock=clock), clock=clock)
    assert len(timed.pairs) == 3 and timed.stop_reason.startswith("--budget 300 s would be overrun")


def test_a_config_triton_refuses_is_bad_input_naming_its_flag(tmp_path):
    job = CompareJob.from_flags(flags(tmp_path))
    with pytest.raises(BadInput, match=r"^--candidate .*candidate.pbtxt: Triton refused it: Triton refused"):
        measure_pairs(job, PairBench(batching, refuse=job.candidate.config))
