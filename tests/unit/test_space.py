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
    space = load_space(ROOT / "search_spaces" / "default.yaml")
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
    space = load_space(ROOT / "search_spaces" / "default.yaml")
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
                        st.lists(st.integers(-2, 70), max_size=4), st.floats(allow_nan=True))
knob_specs = st.one_of(
    knob_values,
    st.dictionaries(st.sampled_from(["type", "low", "high", "step", "log", "choices", "value", "when", "bogus"]),
                    st.one_of(knob_values, st.sampled_from(["int", "pow2", "bool", "choice", "dynamic_batching"])),
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
