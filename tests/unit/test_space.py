from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tuner.errors import BadInput
from tuner.results import TrialConfig
from tuner.space import builtin_space, builtin_space_names, load_space, parse_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["default", "cpu", "gpu"])
def test_shipped_spaces_load(name):
    space = load_space(ROOT / "search_spaces" / f"{name}.yaml")
    assert space.grid_configs()


# A user space in the old default's style: preferred sizes sampled independently of max_batch_size, linear delays.
INDEPENDENT_PREFERRED = {"version": 1, "knobs": {
    "instance_count": {"type": "int", "low": 1, "high": 4}, "max_batch_size": {"type": "pow2", "low": 1, "high": 64},
    "dynamic_batching": {"type": "bool"},
    "max_queue_delay_microseconds": {"type": "int", "low": 0, "high": 2000, "step": 100},
    "preferred_batch_size": {"type": "pow2", "low": 1, "high": 64}}}


@pytest.mark.parametrize("name", ["default", "cpu", "gpu"])
def test_builtin_spaces_come_from_the_package_and_match_search_spaces(name):
    # importlib.resources reads tuner.spaces (search_spaces/ mapped into the package), not a path beside the source.
    space = builtin_space(name)
    assert space is not None
    assert space.knobs == load_space(ROOT / "search_spaces" / f"{name}.yaml").knobs
    assert builtin_space(f"{name}-nope") is None


def test_every_yaml_in_search_spaces_is_a_builtin():
    assert sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml")) == builtin_space_names()


def test_conditional_knobs_only_when_dynamic_batching_on():
    space = parse_space(INDEPENDENT_PREFERRED, "independent.yaml")
    off = space.sample(optuna.trial.FixedTrial({"instance_count": 2, "max_batch_size_exp": 3, "dynamic_batching": 0}))
    assert off == TrialConfig(instance_count=2, max_batch_size=8, dynamic_batching=False)
    on = space.sample(optuna.trial.FixedTrial({"instance_count": 1, "max_batch_size_exp": 3, "dynamic_batching": 1,
                                               "max_queue_delay_microseconds": 300, "preferred_batch_size_exp": 5}))
    # preferred size above max_batch_size is clamped to it (the closest valid config)
    assert on == TrialConfig(instance_count=1, max_batch_size=8, dynamic_batching=True,
                             max_queue_delay_microseconds=300, preferred_batch_size=(8,))


def test_non_batching_model_drops_batching_knobs():
    space = load_space(ROOT / "search_spaces" / "default.yaml").for_model(batches=False)
    assert [k.name for k in space.knobs] == ["instance_count"]
    assert len(space.grid_configs()) == 4


def test_batch_sizes_are_sampled_as_exponents_and_switches_as_ints():
    space = load_space(ROOT / "search_spaces" / "cpu.yaml")
    grid = space.grid()
    assert grid["max_batch_size_exp"] == [0, 1, 2, 3, 4, 5]
    assert grid["dynamic_batching"] == [0, 1]
    assert "instance_kind" not in grid  # fixed knobs are not parameters


def test_params_of_round_trips_through_sample():
    space = parse_space(INDEPENDENT_PREFERRED, "independent.yaml")
    config = TrialConfig(instance_count=2, max_batch_size=16, dynamic_batching=True, max_queue_delay_microseconds=500,
                         preferred_batch_size=(8,))
    assert space.sample(optuna.trial.FixedTrial(space.params_of(config))) == config


@pytest.mark.parametrize(
    "document, message",
    [
        ([], "expected a mapping"),
        ({"knobs": {}}, "knobs: expected a mapping"),
        ({"knobs": {"speed": 1}}, r"knobs.speed: unknown knob"),
        ({"knobs": {"instance_count": {"type": "int", "low": 4, "high": 1}}}, "empty range: low 4 > high 1"),
        ({"knobs": {"instance_count": {"type": "int", "low": "one", "high": 2}}}, r"instance_count.low: expected an integer"),
        ({"knobs": {"max_batch_size": {"type": "pow2", "low": 3, "high": 8}}}, r"max_batch_size.low: expected a power of two"),
        ({"knobs": {"max_queue_delay_microseconds": {"type": "int", "low": 0, "high": 10}}}, "must name a bool knob"),
        ({"knobs": {"dynamic_batching": False, "max_queue_delay_microseconds": {"low": 0, "high": 10}}},
         "fixed off"),
        ({"knobs": {"instance_count": {"low": 1, "high": 2, "colour": "red"}}}, "unknown key 'colour'"),
        ({"knobs": {"instance_count": {"low": 1, "high": 2}}, "constraints": {"max_p99_ms": -1}},
         r"constraints.max_p99_ms: expected a positive number"),
        ({"knobs": {"instance_count": {"low": 1, "high": 2}}, "extra": 1}, "unknown key 'extra'"),
        ({"knobs": {"max_batch_size": {"type": "pow2", "low": 1, "high": 4}, "dynamic_batching": {"type": "bool"},
                    "preferred_batch_size": {"type": "pow2", "low": 8, "high": 16}}}, "exceeds max_batch_size.high"),
    ],
)
def test_schema_errors_name_file_and_key(document, message):
    with pytest.raises(BadInput, match=message) as info:
        parse_space(document, "spaces/x.yaml")
    assert str(info.value).startswith("spaces/x.yaml")


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("knobs:\n  instance_count: [1, 2\n")
    with pytest.raises(BadInput, match=r"bad.yaml:\d+: not valid YAML"):
        load_space(path)


knob_values = st.one_of(st.integers(-5, 300), st.booleans(), st.text(max_size=5), st.none(),
                        st.lists(st.integers(-2, 70), max_size=4), st.floats(allow_nan=True),
                        st.lists(st.sampled_from(["unset", 1, 0.5, 0.25, 0.3, 0, 2, True]), max_size=4))
knob_specs = st.one_of(
    knob_values,
    st.dictionaries(st.sampled_from(["type", "low", "high", "step", "log", "choices", "value", "when", "bogus"]),
                    st.one_of(knob_values, st.sampled_from(["int", "pow2", "bool", "choice", "fraction", "unset", "dynamic_batching"])),
                    max_size=5),
)
documents = st.one_of(
    st.none(), st.integers(), st.text(max_size=10),
    st.fixed_dictionaries({"knobs": st.dictionaries(st.sampled_from(
        ["instance_count", "instance_kind", "max_batch_size", "dynamic_batching", "max_queue_delay_microseconds",
         "preferred_batch_size", "nope"]), knob_specs, max_size=6)},
        optional={"constraints": st.dictionaries(st.sampled_from(["max_p99_ms", "min_throughput", "x"]), knob_values),
                  "version": st.integers(0, 2)}),
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_any_document_is_accepted_or_rejected_cleanly(document):
    try:
        space = parse_space(document, "gen.yaml")
    except BadInput as exc:
        assert str(exc).startswith("gen.yaml") and "\n" not in str(exc)
        return
    # accepted spaces must sample valid configs
    for config in space.grid_configs()[:50]:
        assert isinstance(config, TrialConfig)
    yaml.safe_dump(space.grid())


def test_examples_are_valid():
    from tuner.inputs import input_specs, load_input_data

    space = load_space(ROOT / "examples" / "cpu_small.yaml")
    assert space.constraints == {"max_p99_ms": 50.0, "max_memory_mb": 2000.0} and len(space.grid_configs()) == 24
    specs = input_specs({"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": ["-1", "256"]}]},
                        {"max_batch_size": 32}, {})
    samples = load_input_data(ROOT / "examples" / "mlp_inputs.json", specs)
    assert len(samples) == 3 and all(s["INPUT"].shape == (1, 256) for s in samples)


# Built-in spaces express only meaningful configs (issue 13 item 7).

BUILTIN = ["default", "cpu", "gpu"]


def builtin(name):
    return load_space(ROOT / "search_spaces" / f"{name}.yaml")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_spaces_hold_only_meaningful_configs(name):
    space = builtin(name)
    delays = next(k for k in space.knobs if k.name == "max_queue_delay_microseconds")
    assert delays.log and delays.ladder()[0] >= 50
    for config in space.grid_configs():
        if config.max_batch_size == 1:  # no batch can form: never with dynamic batching
            assert config.dynamic_batching is False
        if not config.dynamic_batching:  # batching-only knobs are left out, so such configs share one key
            assert config.max_queue_delay_microseconds is None and config.preferred_batch_size is None
        else:
            assert config.max_queue_delay_microseconds in delays.ladder()
        if config.preferred_batch_size:  # a share of the max batch: never batching in name only
            (size,) = config.preferred_batch_size
            assert config.max_batch_size is not None and config.max_batch_size % size == 0
            assert 2 * size >= config.max_batch_size


def test_default_space_leaves_preferred_sizes_to_the_model_and_counts_its_configs():
    space = builtin("default")
    assert "preferred_batch_size" not in {k.name for k in space.knobs}
    # 4 instance counts x (7 max batch sizes off + 6 of them (not 1) on x 7 queue delays)
    assert len(space.grid_configs()) == 4 * (7 + 6 * 7)


def test_queue_delay_is_a_log_ladder_sampled_by_step():
    space = builtin("default")
    assert space.grid()["max_queue_delay_microseconds_step"] == list(range(7))
    on = space.sample(optuna.trial.FixedTrial({"instance_count": 1, "max_batch_size_exp": 4, "dynamic_batching": 1,
                                               "max_queue_delay_microseconds_step": 3}))
    assert on == TrialConfig(instance_count=1, max_batch_size=16, dynamic_batching=True,
                             max_queue_delay_microseconds=400)
    assert space.params_of(on)["max_queue_delay_microseconds_step"] == 3
    # a delay off the ladder (e.g. the model's own) is not a point of the space: dropped, not rounded
    assert "max_queue_delay_microseconds_step" not in space.params_of(
        TrialConfig(instance_count=1, max_batch_size=16, dynamic_batching=True, max_queue_delay_microseconds=300))
    gpu = next(k for k in builtin("gpu").knobs if k.name == "max_queue_delay_microseconds")
    assert gpu.ladder() == [100, 200, 400, 800, 1600, 3200, 6400]


def test_ladder_ends_at_high_even_off_the_doubling():
    space = parse_space({"knobs": {"dynamic_batching": True, "max_queue_delay_microseconds":
                                   {"low": 100, "high": 500, "log": True}}}, "x.yaml")
    assert space.knobs[1].ladder() == [100, 200, 400, 500]


def test_equivalent_configs_map_to_one_key():
    space = builtin("default")
    off = [space.sample(optuna.trial.FixedTrial({"instance_count": 2, "max_batch_size_exp": 3, "dynamic_batching": 0,
                                                 "max_queue_delay_microseconds_step": step})) for step in range(7)]
    assert len({c.key() for c in off}) == 1
    # max batch 1 with dynamic batching on is the same config as with it off
    one_on = space.sample(optuna.trial.FixedTrial({"instance_count": 2, "max_batch_size_exp": 0,
                                                   "dynamic_batching": 1, "max_queue_delay_microseconds_step": 5}))
    one_off = space.sample(optuna.trial.FixedTrial({"instance_count": 2, "max_batch_size_exp": 0,
                                                    "dynamic_batching": 0}))
    assert one_on == one_off == TrialConfig(instance_count=2, max_batch_size=1, dynamic_batching=False)


def test_preferred_size_as_a_fraction_of_the_sampled_max_batch():
    space = builtin("gpu")
    assert space.grid()["preferred_batch_size_fraction"] == ["unset", 1.0, 0.5]

    def sample(exp, fraction):
        return space.sample(optuna.trial.FixedTrial({"instance_count": 1, "max_batch_size_exp": exp,
                                                     "dynamic_batching": 1, "max_queue_delay_microseconds_step": 0,
                                                     "preferred_batch_size_fraction": fraction}))

    assert sample(6, 0.5).preferred_batch_size == (32,)
    assert sample(3, 1.0).preferred_batch_size == (8,)
    unset = sample(6, "unset")
    assert unset.preferred_batch_size == () and "preferred_batch_size=unset" in unset.describe()
    assert TrialConfig.from_knobs(unset.knobs()) == unset
    for config in (sample(6, 0.5), sample(3, 1.0), unset):
        assert space.sample(optuna.trial.FixedTrial(space.params_of(config))) == config


def test_unset_preferred_sizes_clear_the_models_own_and_dedupe_with_none():
    from tuner.model_config import apply_trial, load_model_config, trial_of

    base = load_model_config(ROOT / "model_repository", "mlp")
    with_own = apply_trial(base, TrialConfig(dynamic_batching=True, preferred_batch_size=(16,)))
    cleared = apply_trial(with_own, TrialConfig(dynamic_batching=True, preferred_batch_size=()))
    assert list(cleared.dynamic_batching.preferred_batch_size) == []
    plain = apply_trial(base, TrialConfig(dynamic_batching=True))
    assert trial_of(cleared).key() == trial_of(plain).key()


@pytest.mark.parametrize("spec, message", [
    ({"type": "fraction", "choices": [0.3]}, r"fractions of max_batch_size such as 1, 0.5, 0.25; got 0.3"),
    ({"type": "fraction", "choices": []}, "expected a non-empty list"),
    ({"type": "fraction", "choices": [0.5, 0.5]}, "has duplicates"),
    ({"type": "fraction", "choices": [True]}, "got True"),
    ({"type": "fraction", "choices": [2]}, "got 2"),
])
def test_fraction_schema_errors_name_the_key(spec, message):
    document = {"knobs": {"max_batch_size": {"type": "pow2", "low": 1, "high": 8}, "dynamic_batching": {"type": "bool"},
                          "preferred_batch_size": spec}}
    with pytest.raises(BadInput, match=message) as info:
        parse_space(document, "s.yaml")
    assert str(info.value).startswith("s.yaml: knobs.preferred_batch_size.choices")


def test_fraction_needs_max_batch_size_in_the_space():
    with pytest.raises(BadInput, match=r"s.yaml: knobs.preferred_batch_size.type: fraction is a share of "
                                       "max_batch_size"):
        parse_space({"knobs": {"dynamic_batching": {"type": "bool"},
                               "preferred_batch_size": {"type": "fraction", "choices": [1]}}}, "s.yaml")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(BUILTIN), st.data())
def test_any_sampled_config_of_a_builtin_space_applies_to_the_model(name, data):
    from tuner.model_config import apply_trial, load_model_config

    space = builtin(name)
    params = {param: data.draw(st.sampled_from(values), label=param) for param, values in space.grid().items()}
    config = space.sample(optuna.trial.FixedTrial(params))
    apply_trial(load_model_config(ROOT / "model_repository", "mlp"), config)  # never an invalid config
    assert space.sample(optuna.trial.FixedTrial(space.params_of(config))) == config


def test_first_configs_batch_every_request_in_flight_at_one_to_three_instances():
    from tuner.space import _FixedParams, builtin_space

    gpu = builtin_space("gpu")
    assert gpu is not None
    own = TrialConfig(instance_count=1, max_batch_size=64, dynamic_batching=False)
    configs = [gpu.sample(_FixedParams(p)) for p in gpu.first_params(32, own)]
    assert [c.instance_count for c in configs] == [1, 2, 3]
    for config in configs:
        assert config.dynamic_batching is True and config.instance_kind == "KIND_GPU"
        assert config.max_batch_size == 64  # the model's own max batch already holds 32 requests
        assert config.max_queue_delay_microseconds == 200 and config.preferred_batch_size == ()
    # Above the model's own max batch: the smallest power of two that holds every request in flight.
    assert {gpu.sample(_FixedParams(p)).max_batch_size for p in gpu.first_params(100, own)} == {128}
    # Beyond the space: its largest max batch. Without a fixed concurrency: 32.
    assert {gpu.sample(_FixedParams(p)).max_batch_size for p in gpu.first_params(4096, own)} == {256}
    assert {gpu.sample(_FixedParams(p)).max_batch_size for p in gpu.first_params(None, own)} == {64}
    cpu = builtin_space("cpu")
    assert cpu is not None
    small = [cpu.sample(_FixedParams(p)) for p in cpu.first_params(4, TrialConfig(max_batch_size=1))]
    assert [(c.instance_count, c.max_batch_size, c.dynamic_batching) for c in small] == \
        [(1, 4, True), (2, 4, True), (3, 4, True)]


def test_no_first_configs_where_the_space_cannot_batch():
    from tuner.space import builtin_space

    gpu = builtin_space("gpu")
    assert gpu is not None
    assert gpu.for_model(batches=False).first_params(32) == []
    one = parse_space({"knobs": {"max_batch_size": {"type": "pow2", "low": 1, "high": 1},
                                 "dynamic_batching": {"type": "bool"}}}, "one.yaml")
    assert one.first_params(8) == []
