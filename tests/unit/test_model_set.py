"""A set of models tuned together (search --models), without a server: the set file, the joint space, the set's
config, key and limits, the loop over a set (fake bench, real Optuna study) and what sharing saves."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import MODEL_REPOSITORY
from tests.unit.test_search_loop import CPU_SPACE, fake_measurement
from tuner import paths
from tuner.bench import LoadPolicy
from tuner.cli import cli
from tuner.load import LoadSpec, WindowStats
from tuner.measure import InputSource, MeasureSettings, combine_stats, pool_measurements
from tuner.model_config import SetBase, check_config, effective_key, load_model_config, own_config
from tuner.modelset import SetJob, SetSpace, load_set_file, sharing_summary
from tuner.objective import FAILED_VIOLATION, Constraints, best_trial, set_violations
from tuner.results import SetConfig, Spread, TrialConfig, TrialResult
from tuner.search import Search
from tuner.set_bench import Member
from tuner.space import parse_space
from tuner.study import study_name

REPO = str(MODEL_REPOSITORY)
MLP, NOBATCH = load_model_config(MODEL_REPOSITORY, "mlp"), load_model_config(MODEL_REPOSITORY, "mlp_nobatch")
SPACE = parse_space(yaml.safe_load(CPU_SPACE), "test-space.yaml")
GOOD = "models:\n  mlp: {concurrency: 4, max_p99_ms: 50}\n  mlp_nobatch: {request_rate: 20, shape: 'INPUT:4,256'}\n"


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("text, message", [
    ("models: [mlp]", "models: expected a mapping of model names"),
    ("models:\n  mlp: {}\n", "models: a set needs at least two models"),
    ("models:\n  mlp: {}\n  mlp_nobatch: {}\nmax_memory: 4\n", "unknown key 'max_memory'; valid: models, max_memory_mb"),
    ("models:\n  mlp: {concurrency: 4, request_rate: 9}\n  mlp_nobatch: {}\n",
     "models.mlp: give concurrency or request_rate, not both"),
    ("models:\n  mlp: {max_p99_ms: -1}\n  mlp_nobatch: {}\n", "models.mlp.max_p99_ms: expected a positive number"),
    ("models:\n  mlp: {concurrency: 2.5}\n  mlp_nobatch: {}\n", "models.mlp.concurrency: expected a positive integer"),
    ("models:\n  mlp: {latency: 3}\n  mlp_nobatch: {}\n", "models.mlp: unknown key 'latency'"),
    ("models:\n  mlp: {shape: 'INPUT:x'}\n  mlp_nobatch: {}\n", "models.mlp.shape: --shape INPUT:x"),
    ("models:\n  mlp: {input_data: nowhere.json}\n  mlp_nobatch: {}\n", "models.mlp.input_data: no such file"),
    ("models:\n  mlp: {}\n  resnet: {}\n", "--model resnet: no resnet/config.pbtxt"),
    ("models:\n  mlp: {}\n  mlp_nobatch: {}\nmax_memory_mb: lots\n", "max_memory_mb: expected a positive number"),
    ("models: {mlp: [\n", "not valid YAML"),
])
def test_a_bad_set_file_is_one_line_naming_the_file_and_field_exit_2(tmp_path, text, message):
    path = tmp_path / "set.yaml"
    path.write_text(text)
    result = invoke(["search", "-r", REPO, "--models", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["-m", "mlp"], "--model: give either --model NAME or --models FILE"),
    (["--concurrency", "4"], "--concurrency: with --models each model's load and limits are in"),
    (["--max-p99-ms", "5"], "--max-p99-ms: with --models"),
    (["--shape", "INPUT:4"], "--shape: with --models"),
])
def test_flags_that_are_each_models_own_are_refused_with_a_set(tmp_path, flags, message):
    path = tmp_path / "set.yaml"
    path.write_text(GOOD)
    result = invoke(["search", "-r", REPO, "--models", str(path), *flags, "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_search_without_a_model_or_a_set_names_both_flags(tmp_path):
    result = invoke(["search", "-r", REPO, "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--model: name the model" in result.output and "--models FILE" in result.output


def test_a_set_file_gives_each_model_its_load_limits_and_inputs_relative_to_the_file(tmp_path):
    (tmp_path / "in.json").write_text("{}")
    path = tmp_path / "set.yaml"
    path.write_text("models:\n  mlp: {request_rate: 50, min_throughput: 40, input_data: in.json}\n"
                    "  mlp_nobatch: {shape: 'INPUT:4,256'}\nmax_memory_mb: 900\n")
    members, memory = load_set_file(path, MODEL_REPOSITORY, "cpu", LoadSpec(concurrency=1, request_timeout_s=7))
    assert memory == 900 and [m.model for m in members] == ["mlp", "mlp_nobatch"]
    mlp, nobatch = members
    assert mlp.load.request_rate_per_s == 50 and mlp.load.concurrency is None and mlp.load.request_timeout_s == 7
    assert nobatch.load.concurrency == 8  # neither given: the closed loop every search defaults to
    assert mlp.constraints.min_throughput_per_s == 40 and mlp.inputs.input_data == tmp_path / "in.json"
    assert nobatch.inputs.shapes == {"INPUT": (4, 256)}
    assert [k.name for k in nobatch.space.knobs] == ["instance_count", "instance_kind"]  # no batching knobs


def _set_space() -> SetSpace:
    return SetSpace((("mlp", SPACE.for_model(True)), ("mlp_nobatch", SPACE.for_model(False))),
                    {"mlp": 8, "mlp_nobatch": None})


def test_the_joint_space_samples_one_config_per_model_under_its_own_param_names():
    space = _set_space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    config = space.sample(trial)
    assert isinstance(config, SetConfig) and config.models == ("mlp", "mlp_nobatch")
    assert {name for name in trial.params if name.startswith("mlp_nobatch/")} == {"mlp_nobatch/instance_count"}
    assert {"mlp/instance_count", "mlp/dynamic_batching"} <= set(trial.params)
    assert all(name.split("/")[0] in config.models for name in trial.params)
    assert "mlp_nobatch/instance_count" in trial.params and config.of("mlp_nobatch").max_batch_size is None
    again = space.sample(optuna.trial.FixedTrial(space.params_of(config)))
    assert again == config  # params_of is sample's inverse
    assert len(space.grid_configs()) == len(SPACE.for_model(True).grid_configs()) * 4


def test_first_configs_are_each_models_own_first_configs_zipped_with_its_own_config_where_it_has_none():
    space = _set_space()
    baseline = own_config(SetBase((("mlp", MLP), ("mlp_nobatch", NOBATCH))))
    first = space.first_params(None, baseline)
    assert len(first) == len(SPACE.for_model(True).first_params(8, baseline.of("mlp"))) > 0
    for params in first:
        config = space.sample(optuna.trial.FixedTrial(params))
        assert config.of("mlp").dynamic_batching is True and config.of("mlp").max_batch_size >= 8
        assert config.of("mlp_nobatch") == space.sample(optuna.trial.FixedTrial(
            space.params_of(baseline))).of("mlp_nobatch")  # the model without batching keeps its own


def test_a_sets_key_is_every_models_effective_config_and_a_bad_knob_names_its_model():
    base = SetBase((("mlp", MLP), ("mlp_nobatch", NOBATCH)))
    own = own_config(base)
    assert isinstance(own, SetConfig) and own.of("mlp").max_batch_size == 32
    same = SetConfig((("mlp", dataclasses.replace(own.of("mlp"), max_queue_delay_microseconds=None)),
                      ("mlp_nobatch", own.of("mlp_nobatch"))))
    assert effective_key(base, same) == effective_key(base, own) is not None
    bad = SetConfig((("mlp", own.of("mlp")), ("mlp_nobatch", TrialConfig(max_batch_size=8))))
    assert effective_key(base, bad) is None
    with pytest.raises(Exception, match="^mlp_nobatch: max_batch_size: model mlp_nobatch has max_batch_size: 0"):
        check_config(base, bad)


def set_measurement(config: SetConfig, ipj: float, p99s: dict[str, float], rates: dict[str, float]):
    """The set's figures (fake_measurement's), with each model's own throughput and p99 and no energy."""
    members = {model: dataclasses.replace(fake_measurement(config.of(model), 1.0), energy_j=None,
                                          throughput_per_s=Spread(rates[model], 0.0, 3),
                                          p99_ms=Spread(p99s[model], 0.0, 3), success_count=int(rates[model] * 3),
                                          inferences_per_j=Spread.of([]), energy_source="unavailable")
               for model in config.models}
    return dataclasses.replace(fake_measurement(config, ipj, {"mode": "set"}), members=members)


def test_set_limits_are_the_servers_on_the_set_and_each_models_on_its_own_figures():
    config = SetConfig((("mlp", TrialConfig(instance_count=1)), ("mlp_nobatch", TrialConfig(instance_count=2))))
    m = set_measurement(config, 50.0, {"mlp": 4.0, "mlp_nobatch": 30.0}, {"mlp": 90.0, "mlp_nobatch": 10.0})
    limits = {"mlp": Constraints(max_p99_ms=10), "mlp_nobatch": Constraints(max_p99_ms=20, min_throughput_per_s=5)}
    found = set_violations(m, Constraints(max_memory_mb=100), limits)
    assert found["mlp/max_p99_ms"] == pytest.approx(-0.6) and found["mlp_nobatch/max_p99_ms"] == pytest.approx(0.5)
    assert found["mlp_nobatch/min_throughput"] == pytest.approx(-1.0)
    assert found["max_memory_mb"] == pytest.approx(0.2) and "max_p99_ms" not in found  # 120 MB of the server's 100
    assert set_violations(None, Constraints(), limits)["failed"] == FAILED_VIOLATION
    result = TrialResult(3, config, m, None, found)
    back = TrialResult.from_dict(json.loads(json.dumps(result.to_dict())))  # records read back as written
    assert back.config == config and json.dumps(back.to_dict()) == json.dumps(result.to_dict())
    assert back.measurement is not None and back.measurement.members["mlp_nobatch"].p99_ms.mean == 30.0


def test_windows_of_several_models_combine_into_the_sets():
    a = WindowStats(1.0, [1.0, 2.0], failure_count=1, errors=["x"], sent_count=3)
    b = WindowStats(1.0, [5.0], sent_count=None)
    both = combine_stats([a, b])
    assert both.success_count == 3 and both.failure_count == 1 and both.throughput_per_s == 3.0
    assert both.sent_count is None and combine_stats([a, a]).sent_count == 6


def test_pooled_repeats_of_a_set_pool_each_models_figures_too():
    config = SetConfig((("mlp", TrialConfig(instance_count=1)), ("mlp_nobatch", TrialConfig(instance_count=1))))
    runs = [set_measurement(config, 50.0, {"mlp": p, "mlp_nobatch": 2 * p}, {"mlp": 90.0, "mlp_nobatch": 10.0})
            for p in (4.0, 6.0)]
    pooled = pool_measurements(runs, MeasureSettings())
    assert pooled.repeats == 2 and pooled.members["mlp"].repeats == 2
    assert pooled.members["mlp_nobatch"].success_count == 60


def test_what_sharing_saves_is_the_sets_power_against_each_model_alone_at_its_rate_in_the_set():
    config = SetConfig((("a", TrialConfig(instance_count=1)), ("b", TrialConfig(instance_count=1))))
    together = dataclasses.replace(set_measurement(config, 10.0, {"a": 5.0, "b": 5.0}, {"a": 80.0, "b": 20.0}),
                                   total_energy_j=60.0, duration_s=3.0)  # 20 W for 100 infer/s
    alone_a = dataclasses.replace(fake_measurement(TrialConfig(), 5.0), total_energy_j=45.0, success_count=300,
                                  duration_s=3.0)  # 0.15 J per inference
    alone_b = dataclasses.replace(fake_measurement(TrialConfig(), 5.0), total_energy_j=30.0, success_count=60,
                                  duration_s=3.0)  # 0.5 J per inference
    found = sharing_summary("best", 4, config, together, {"a": alone_a, "b": alone_b})
    assert found["together"]["power_w"] == pytest.approx(20.0)
    assert found["alone"]["a"]["power_at_set_rate_w"] == pytest.approx(12.0)  # 80 infer/s x 0.15 J
    assert found["separate_power_w"] == pytest.approx(22.0) and found["saving_fraction"] == pytest.approx(1 - 20 / 22)
    assert found["separate_inferences_per_j"] == pytest.approx(100 / 22)
    failed = sharing_summary("best", 4, config, together, {"a": alone_a, "b": "ServerDied: gone"})
    assert failed["saving_fraction"] is None and failed["alone"]["b"] == {"error": "ServerDied: gone"}
    assert "could not be measured alone" in failed["reason"]


class FakeSetBench:
    """Measures a set instantly: more mlp instances are more efficient; mlp_nobatch at 3+ instances breaks its p99."""

    server_restarts = 0
    idle_power_w = {"cpu": 4.0}
    environment = {"triton_server": "fake"}
    meter_details = {"estimate": {"name": "estimate"}}

    def __init__(self, job: SetJob) -> None:
        self.job, self.calls = job, []

    def measure(self, config, number, screen=None):
        self.calls.append(config)
        p99 = 30.0 if (config.of("mlp_nobatch").instance_count or 1) >= 3 else 5.0
        m = set_measurement(config, 10.0 + (config.of("mlp").instance_count or 1),
                            {"mlp": 5.0, "mlp_nobatch": p99}, {"mlp": 90.0, "mlp_nobatch": 10.0})
        return TrialResult(number, config, m, None, self.job.violations(m))

    def remeasure(self, result):
        return self.measure(result.config, result.number)


def _set_job(tmp_path) -> SetJob:
    members = (Member("mlp", MLP, SPACE.for_model(True), Constraints(max_p99_ms=50), LoadSpec(concurrency=4),
                      InputSource({})),
               Member("mlp_nobatch", NOBATCH, SPACE.for_model(False), Constraints(max_p99_ms=20),
                      LoadSpec(concurrency=None, request_rate_per_s=10), InputSource({"INPUT": (4, 256)})))
    return SetJob(model_repository=MODEL_REPOSITORY, model="mlp+mlp_nobatch",
                  base=SetBase((("mlp", MLP), ("mlp_nobatch", NOBATCH))), space=SPACE, constraints=Constraints(),
                  load=LoadPolicy(members[0].load), inputs=InputSource({}), measure=MeasureSettings(),
                  output=tmp_path, members=members)


def test_the_search_loop_runs_a_set_baseline_first_deduped_persisted_and_resumable(tmp_path):
    from tuner.job import SearchSettings

    job = _set_job(tmp_path)
    bench = FakeSetBench(job)
    outcome = Search(job, SearchSettings(trials=6, seed=2)).run(bench)
    assert len(outcome.results) == 6 and bench.calls[0] == own_config(job.base)  # every model's own config first
    keys = [effective_key(job.base, c) for c in bench.calls]
    assert len(set(keys)) == len(keys)  # a set's config is measured once
    best = best_trial(outcome.results)
    assert best is not None and (best.config.of("mlp_nobatch").instance_count or 1) < 3  # its p99 limit holds
    broken = [r for r in outcome.results if (r.config.of("mlp_nobatch").instance_count or 1) >= 3]
    assert all(not r.feasible and r.violations["mlp_nobatch/max_p99_ms"] > 0 for r in broken)
    study = optuna.load_study(study_name=study_name(job.model), storage=paths.study_url(tmp_path))
    assert all(name.split("/")[0] in ("mlp", "mlp_nobatch") for t in study.trials for name in t.params)

    resumed = Search(job, SearchSettings(trials=8, seed=2, resume=True)).run(bench)
    assert len(resumed.results) == 8 and len(bench.calls) == 8  # the first six are kept, not measured again
    changed = dataclasses.replace(job, members=(job.members[0], dataclasses.replace(
        job.members[1], constraints=Constraints(max_p99_ms=99))))
    with pytest.raises(Exception, match="members"):  # another model's limit is another study
        Search(changed, SearchSettings(trials=9, resume=True)).open()


def test_workers_share_a_sets_study_and_one_with_another_models_limit_is_refused(tmp_path):
    from tuner.errors import BadInput
    from tuner.job import SearchSettings

    job = _set_job(tmp_path / "a")
    settings = SearchSettings(trials=4, seed=2, study="set", storage=f"journal://{tmp_path / 'study.journal'}")
    first = Search(job, settings).run(FakeSetBench(job))
    assert len(first.results) == 4
    other = dataclasses.replace(job, output=tmp_path / "b")
    bench = FakeSetBench(other)
    second = Search(other, dataclasses.replace(settings, trials=5)).run(bench)  # the study's budget (4) holds
    assert len(second.results) == 4 and bench.calls == []
    changed = dataclasses.replace(other, members=(other.members[0], dataclasses.replace(
        other.members[1], load=LoadSpec(concurrency=None, request_rate_per_s=99))))
    with pytest.raises(BadInput, match="load"):  # each model's load is the study's
        Search(changed, settings).open()


def test_a_sets_summary_and_yearly_figures_cover_the_whole_set(tmp_path):
    from tuner.impact import ImpactInputs
    from tuner.job import SearchSettings
    from tuner.outputs import summary_document, trials_frame

    job = dataclasses.replace(_set_job(tmp_path), impact=ImpactInputs(traffic_per_s=100.0,
                                                                       carbon_intensity_g_per_kwh=400.0))
    outcome = Search(job, SearchSettings(trials=4, seed=2)).run(FakeSetBench(job))
    summary = summary_document(job, outcome, tmp_path)
    assert summary["model"] == "mlp+mlp_nobatch" and summary["model_config_pbtxt"] is None
    assert summary["load"] == {"mode": "set", "members": {"mlp": {"mode": "concurrency", "concurrency": 4,
                                                                  "engine": "builtin"},
                                                          "mlp_nobatch": {"mode": "request_rate",
                                                                          "request_rate_per_s": 10,
                                                                          "engine": "builtin"}}}
    assert summary["models"]["mlp_nobatch"]["best"]["p99_ms"]["mean"] == 5.0
    assert summary["models"]["mlp"]["exported_config"] == str(tmp_path / "mlp" / "config.pbtxt")
    yearly = summary["impact"]["annual"]
    best_j = outcome.best.measurement.energy_per_inference_j  # the set's joules per inference (all of its models)
    chosen = yearly["configs"]["chosen"]
    assert chosen["trial"] == outcome.best.number and chosen["energy_per_inference_j"] == pytest.approx(best_j)
    assert chosen["energy_kwh_per_year"] == pytest.approx(100.0 * 365 * 24 * 3600 * best_j / 3.6e6, rel=0.01)
    frame = trials_frame(outcome.results, outcome.baseline)
    assert "instance_count" not in frame.columns and frame["mlp_nobatch/p99_ms"].notna().all()


def test_a_load_tool_that_could_not_send_one_models_rate_fails_the_set_as_the_tools_not_the_configs():
    from tuner.errors import LoadToolError
    from tuner.measure import Drive, _summarize_set

    config = SetConfig((("a", TrialConfig(instance_count=1)), ("b", TrialConfig(instance_count=1))))
    closed = Drive("a", LoadSpec(concurrency=4), [])
    slow = Drive("b", LoadSpec(concurrency=None, request_rate_per_s=100.0), [])
    full = [WindowStats(1.0, [2.0] * 100, sent_count=100) for _ in range(3)]
    starved = [WindowStats(1.0, [2.0] * 10, sent_count=10) for _ in range(3)]  # sent 10/s of the asked 100
    with pytest.raises(LoadToolError, match="^b: builtin sent 10 requests/s of the asked 100"):
        _summarize_set(config, [closed, slow], [full, starved], [[], [], []], MeasureSettings(), None)
