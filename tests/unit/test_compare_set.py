"""greentune compare --models FILE without a server: its flags and folders checked before anything starts (one line,
exit 2, naming the flag), the job it builds, the pair loop on a fake set bench, and the Comparison of two sets of
configs (the set's energy per inference, each model's own limits named MODEL/constraint, a line per model in
compare.md, compare.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tuner.cli import cli
from tuner.compare import CompareJob, SetCompareBench, SetSource, measure_pairs
from tuner.compare_words import render_markdown
from tuner.comparison import PASS, REGRESSION, Comparison, Pair, SetMember
from tuner.errors import EXIT_REGRESSION, BadInput, ModelLoadError
from tuner.model_config import load_model_config, to_text
from tuner.objective import Constraints
from tuner.results import Measurement

from .test_compare_command import flags
from .test_comparison import measurement
from .test_search_loop import MODEL_REPOSITORY

MODELS = ("mlp", "mlp_nobatch")
SET_FILE = """models:
  mlp:
    concurrency: 4
    max_p99_ms: 250
  mlp_nobatch:
    request_rate: 20
    shape: INPUT:4,256
max_memory_mb: 4000
"""


def set_file(tmp_path: Path) -> Path:
    path = tmp_path / "set.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SET_FILE)
    return path


def candidate_folder(tmp_path: Path, instance_count: int = 2) -> Path:
    """A search's output folder: <model>/config.pbtxt per model, mlp with another instance count."""
    folder = tmp_path / "candidate"
    for model in MODELS:
        config = load_model_config(MODEL_REPOSITORY, model)
        if model == "mlp":
            config.instance_group[0].count = instance_count
        (folder / model).mkdir(parents=True)
        (folder / model / "config.pbtxt").write_text(to_text(config))
    return folder


def set_flags(tmp_path: Path, **changes: object) -> dict[str, object]:
    """compare's flags with --models as click hands them over: no per-model flag, both sides folders."""
    values = flags(tmp_path, model=None, models=set_file(tmp_path), baseline=MODEL_REPOSITORY,
                   candidate=candidate_folder(tmp_path), concurrency=None)
    values.update(changes)
    return values


def invoke(tmp_path: Path, *extra: str, baseline: Path = MODEL_REPOSITORY, candidate: Path | None = None):
    """compare --models through the CLI."""
    candidate = candidate or candidate_folder(tmp_path)
    return CliRunner().invoke(cli, ["compare", "-r", str(MODEL_REPOSITORY), "--models", str(set_file(tmp_path)),
                                    "--baseline", str(baseline), "--candidate", str(candidate),
                                    "-o", str(tmp_path / "out"), *extra])


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# The job.

def test_a_set_job_takes_each_models_load_and_limits_from_the_file_and_both_sides_configs(tmp_path):
    job = CompareJob.from_flags(set_flags(tmp_path))
    assert job.model == "mlp+mlp_nobatch" and [m.model for m in job.members] == list(MODELS)
    assert isinstance(job.baseline, SetSource) and isinstance(job.candidate, SetSource)
    assert job.candidate.config.of("mlp").instance_group[0].count == 2
    assert [m.base for m in job.members] == [load_model_config(MODEL_REPOSITORY, m) for m in MODELS]  # the baseline's
    mlp, nobatch = job.members
    assert mlp.load.concurrency == 4 and mlp.constraints.max_p99_ms == 250
    assert nobatch.load.request_rate_per_s == 20 and nobatch.inputs.shapes == {"INPUT": (4, 256)}
    assert job.constraints == Constraints(max_memory_mb=4000)  # the server's, from the file
    assert job.load_description() == {"mode": "set", "members": {
        "mlp": {"mode": "concurrency", "concurrency": 4, "engine": "builtin"},
        "mlp_nobatch": {"mode": "request_rate", "request_rate_per_s": 20, "engine": "builtin"}}}
    assert job.candidate.text.startswith("# mlp/config.pbtxt\nname: \"mlp\"")
    assert "# mlp_nobatch/config.pbtxt\n" in job.candidate.text
    overridden = CompareJob.from_flags(set_flags(tmp_path / "flag", max_memory_mb=500.0))
    assert overridden.constraints.max_memory_mb == 500.0  # --max-memory-mb over the file's


def test_a_search_output_folder_is_a_side(tmp_path):
    job = CompareJob.from_flags(set_flags(tmp_path, baseline=candidate_folder(tmp_path / "a", instance_count=3)))
    assert isinstance(job.baseline, SetSource) and job.baseline.config.of("mlp").instance_group[0].count == 3
    assert job.members[0].base.instance_group[0].count == 3  # idle power is measured with the baseline's configs


# Bad input: one line, exit 2, naming the flag (and folder and model).

@pytest.mark.parametrize(("extra", "flag"), [
    (["--concurrency", "4"], "--concurrency"),
    (["--request-rate", "10"], "--request-rate"),
    (["--shape", "INPUT:4,256"], "--shape"),
    (["--input-data", "inputs.json"], "--input-data"),
    (["--min-throughput", "5"], "--min-throughput"),
    (["--max-p99-ms", "10"], "--max-p99-ms"),
])
def test_a_per_model_flag_with_models_is_bad_input_naming_it(tmp_path, extra, flag):
    line = one_line(invoke(tmp_path, *extra))
    assert line == (f"error: {flag}: with --models each model's load and limits are in {tmp_path / 'set.yaml'} "
                    "(keys concurrency, request_rate, max_p99_ms, min_throughput, shape, input_data, space)")


def test_model_and_models_together_is_bad_input(tmp_path):
    line = one_line(invoke(tmp_path, "-m", "mlp"))
    assert line == "error: --model: give either --model NAME or --models FILE (a set), not both"


def test_neither_model_nor_models_is_bad_input(tmp_path):
    result = CliRunner().invoke(cli, ["compare", "-r", str(MODEL_REPOSITORY), "--baseline", str(MODEL_REPOSITORY),
                                      "--candidate", str(MODEL_REPOSITORY), "-o", str(tmp_path / "out")])
    assert one_line(result) == ("error: --model: give --model NAME (one model) or --models FILE (a set of models on "
                                "one server)")


def test_a_side_missing_a_models_config_names_the_flag_folder_and_model(tmp_path):
    candidate = candidate_folder(tmp_path)
    shutil.rmtree(candidate / "mlp_nobatch")
    line = one_line(invoke(tmp_path, candidate=candidate))
    assert line == (f"error: --candidate {candidate}: no mlp_nobatch/config.pbtxt there (with --models, give a "
                    "folder holding <model>/config.pbtxt for each of mlp, mlp_nobatch)")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert one_line(invoke(tmp_path / "b", baseline=empty)).startswith(
        f"error: --baseline {empty}: no mlp/config.pbtxt there")


def test_a_side_that_is_not_a_folder_is_bad_input(tmp_path):
    config = MODEL_REPOSITORY / "mlp" / "config.pbtxt"
    assert one_line(invoke(tmp_path, baseline=config)).startswith(
        f"error: --baseline {config}: not a folder (with --models, give a folder holding <model>/config.pbtxt")


def test_a_config_named_for_another_model_is_bad_input(tmp_path):
    candidate = candidate_folder(tmp_path)
    path = candidate / "mlp" / "config.pbtxt"
    path.write_text(path.read_text().replace('name: "mlp"', 'name: "resnet"'))
    line = one_line(invoke(tmp_path, candidate=candidate))
    assert line == f"error: --candidate {path}: a config for model 'resnet', not mlp"


def test_a_side_with_other_model_files_than_the_repositorys_is_bad_input(tmp_path):
    second = tmp_path / "second"
    shutil.copytree(MODEL_REPOSITORY, second, ignore=shutil.ignore_patterns("__pycache__"))
    assert CompareJob.from_flags(set_flags(tmp_path, candidate=second)).candidate.path == str(second)
    (second / "mlp" / "1" / "model.py").write_text("# another model\n")
    line = one_line(invoke(tmp_path / "b", candidate=second))
    assert line.startswith(f"error: --candidate {second}: its mlp differs from -r's in 1/model.py; compare serves "
                           "-r's model files with each config, so a side's folder may differ")


# The Comparison of two sets (pure).

BASELINE_MLP = 'name: "mlp"\ninstance_group {\n  count: 1\n}\n'
CANDIDATE_MLP = 'name: "mlp"\ninstance_group {\n  count: 2\n}\n'
NOBATCH = 'name: "mlp_nobatch"\n'
SET_LOAD = {"mode": "set", "members": {
    "mlp": {"mode": "concurrency", "concurrency": 4, "engine": "builtin"},
    "mlp_nobatch": {"mode": "request_rate", "request_rate_per_s": 20, "engine": "builtin"}}}


def set_measurement(energy_per_inference_j: float, mlp_p99_ms: float = 100.0, nobatch_throughput_per_s: float = 20.0,
                    memory_mb: float = 300.0) -> Measurement:
    """A set's measurement: its totals, and each model's own figures (no energy)."""
    members = {"mlp": measurement(None, throughput_per_s=80.0, p99_ms=mlp_p99_ms, memory_mb=None,
                                  load=SET_LOAD["members"]["mlp"]),
               "mlp_nobatch": measurement(None, throughput_per_s=nobatch_throughput_per_s, p99_ms=30.0, memory_mb=None,
                                          load=SET_LOAD["members"]["mlp_nobatch"])}
    total = measurement(energy_per_inference_j, throughput_per_s=80.0 + nobatch_throughput_per_s, p99_ms=90.0,
                        memory_mb=memory_mb, load=SET_LOAD)
    return Measurement(**{**total.__dict__, "members": members})


def set_comparison(pairs: list[tuple[Measurement, Measurement]], server: Constraints | None = None) -> Comparison:
    members = (SetMember("mlp", Constraints(max_p99_ms=250.0), BASELINE_MLP, CANDIDATE_MLP),
               SetMember("mlp_nobatch", Constraints(), NOBATCH, NOBATCH))
    return Comparison(
        model="mlp+mlp_nobatch", baseline_path="model_repository", candidate_path="set-out",
        baseline_text="# both\n", candidate_text="# both, changed\n",
        pairs=tuple(Pair(i + 1, i % 2 == 1, b, c) for i, (b, c) in enumerate(pairs)), max_regression=0.05,
        inconclusive_passes=False, constraints=server or Constraints(), load=SET_LOAD,
        stop_reason="resolved after 3 pairs", members=members)


def test_a_set_is_gated_on_its_energy_per_inference_with_a_line_per_model():
    same = set_comparison([(set_measurement(1e-3), set_measurement(1e-3 * r)) for r in (1.0, 1.01, 0.99)])
    assert same.verdict == PASS and same.violations() == {}
    text = render_markdown(same)
    lines = text.splitlines()
    assert lines[0].startswith("**greentune compare: PASS** — the candidate set costs ")
    assert "| energy per inference (mJ) | 1.000 ± 0.000 mJ |" in text  # the set's, first
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| mlp")}
    assert rows["mlp"] == ("| mlp | 100.0 ± 0.0 ms | 100.0 ± 0.0 ms | +0.0% (+0.0% to +0.0%) | 80.00 ± 0.00 infer/s "
                           "| 80.00 ± 0.00 infer/s | +0.0% (+0.0% to +0.0%) |")
    assert rows["mlp_nobatch"].startswith("| mlp_nobatch | 30.00 ± 0.00 ms | 30.00 ± 0.00 ms |")
    assert ("- load: each model at its own load: mlp closed loop, 4 requests in flight; mlp_nobatch open loop at 20 "
            "requests/s, sent by builtin") in lines
    assert ("- gate: energy per inference of the set at most 5% above the baseline's; mlp max_p99_ms 250 ms; "
            "mlp_nobatch request_rate 20 requests/s completed (within 5%)") in lines
    block = text[text.index("```diff\n"):]  # one diff per model whose configs differ, labelled with its path
    assert "--- model_repository/mlp/config.pbtxt\n+++ set-out/mlp/config.pbtxt" in block
    assert "-  count: 1\n+  count: 2\n" in block and "mlp_nobatch" not in block


def test_each_models_own_limits_apply_to_the_candidate_named_model_slash_constraint():
    slow = set_comparison([(set_measurement(1e-3), set_measurement(1e-3, mlp_p99_ms=300.0,
                                                                   nobatch_throughput_per_s=15.0)) for _ in range(3)],
                          Constraints(max_memory_mb=200.0))
    assert set(slow.violations()) == {"mlp/max_p99_ms", "mlp_nobatch/request_rate", "max_memory_mb"}
    assert slow.violations()["mlp/max_p99_ms"] == pytest.approx(0.2)
    assert slow.verdict == REGRESSION and slow.exit_code == EXIT_REGRESSION
    first = render_markdown(slow).splitlines()[0]
    assert "mlp max_p99_ms 250 ms: candidate p99 latency 300.0 ms, 20.0% above" in first
    assert ("mlp_nobatch request_rate 20 requests/s (at least 19.00 infer/s must complete): candidate throughput "
            "15.00 infer/s, 21.1% below") in first
    assert "--max-memory-mb 200 MB: candidate memory 300.0 MB, 50.0% above" in first
    assert set(slow.to_document()["violations"]) == {"mlp/max_p99_ms", "mlp_nobatch/request_rate", "max_memory_mb"}
    within = set_comparison([(set_measurement(1e-3), set_measurement(1e-3, mlp_p99_ms=200.0)) for _ in range(3)])
    assert within.violations() == {} and within.verdict == PASS


def test_a_sets_document_holds_each_models_figures_and_reads_back():
    original = set_comparison([(set_measurement(1e-3 * b), set_measurement(1.2e-3 * b, mlp_p99_ms=120.0))
                               for b in (1.0, 1.02, 0.98)])
    document = original.to_document()
    loaded = json.loads(json.dumps(document, allow_nan=False))
    assert loaded["verdict"] == REGRESSION and loaded["models"] == list(MODELS)
    assert loaded["ratios"]["energy_per_inference_j"]["ratio"] == pytest.approx(1.2)
    mlp = loaded["members"]["mlp"]
    assert mlp["constraints"]["max_p99_ms"] == 250.0
    assert mlp["figures"]["baseline"]["p99_ms"]["mean"] == 100.0
    assert mlp["figures"]["candidate"]["p99_ms"]["mean"] == 120.0
    assert mlp["ratios"]["p99_ms"]["ratio"] == pytest.approx(1.2)
    assert mlp["figures"]["candidate"]["throughput_per_s"]["mean"] == 80.0
    assert mlp["candidate_config_pbtxt"] == CANDIDATE_MLP
    assert set(loaded["pairs"][0]["candidate"]["members"]) == set(MODELS)
    back = Comparison.from_document(loaded)
    assert back == original
    assert render_markdown(back) == render_markdown(original) and back.to_document() == document


# The pair loop on a fake set bench.

class SetPairBench(SetCompareBench):
    """Measures a side's configs instantly (no server): the set costs 20% more with mlp at 2 instances; refuses those
    configs when told to."""

    def __init__(self, refuse: bool = False) -> None:  # no server, no meters
        self.refuse, self.loaded = refuse, []

    def measure_configs(self, configs):
        count = configs.of("mlp").instance_group[0].count
        if self.refuse and count == 2:
            raise ModelLoadError("Triton refused to load mlp: no such thing as 2 instances here")
        self.loaded.append(count)
        return set_measurement(1.2e-3 if count == 2 else 1e-3)


def test_the_pair_loop_measures_both_sets_and_compares_them(tmp_path):
    job = CompareJob.from_flags(set_flags(tmp_path))
    bench = SetPairBench()
    comparison = measure_pairs(job, bench)
    assert sorted(bench.loaded) == [1, 1, 1, 2, 2, 2] and comparison.stop_reason == "resolved after 3 pairs"
    assert comparison.verdict == REGRESSION and comparison.energy().ratio == pytest.approx(1.2)
    assert [m.model for m in comparison.members] == list(MODELS) and comparison.load == job.load_description()
    assert comparison.members[0].constraints == Constraints(max_p99_ms=250)
    assert "+  count: 2" in comparison.config_diff()
    refused = CompareJob.from_flags(set_flags(tmp_path / "refused"))
    with pytest.raises(BadInput, match=f"^--candidate {refused.candidate.path}: Triton refused it: Triton refused to "
                                       "load mlp: no such thing"):
        measure_pairs(refused, SetPairBench(refuse=True))
