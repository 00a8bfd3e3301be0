from __future__ import annotations

import pytest
from google.protobuf import text_format

from tests.conftest import MODEL_REPOSITORY
from tuner.errors import BadInput
from tuner.model_config import (
    apply_trial,
    load_model_config,
    parse_set_options,
    read_model_config,
    to_json,
    to_text,
    trial_of,
    write_model_config,
)
from tuner.results import TrialConfig


@pytest.fixture
def mlp():
    return load_model_config(MODEL_REPOSITORY, "mlp")


@pytest.fixture
def nobatch():
    return load_model_config(MODEL_REPOSITORY, "mlp_nobatch")


def test_reads_example_models(mlp, nobatch):
    assert mlp.name == "mlp" and mlp.max_batch_size == 32 and mlp.backend == "python"
    assert nobatch.max_batch_size == 0
    assert [i.name for i in mlp.input] == ["INPUT"]


def test_apply_trial_sets_every_knob_on_a_copy(mlp):
    trial = TrialConfig(instance_count=3, instance_kind="KIND_CPU", max_batch_size=16, dynamic_batching=True,
                        max_queue_delay_microseconds=500, preferred_batch_size=(4, 8))
    rendered = apply_trial(mlp, trial)
    assert rendered.instance_group[0].count == 3
    assert rendered.max_batch_size == 16
    assert rendered.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(rendered.dynamic_batching.preferred_batch_size) == [4, 8]
    # inputs and outputs survive, and the original is untouched
    assert rendered.input == mlp.input and rendered.output == mlp.output
    assert mlp.instance_group[0].count == 1 and not mlp.HasField("dynamic_batching")


def test_dynamic_batching_off_clears_the_field(mlp):
    on = apply_trial(mlp, TrialConfig(dynamic_batching=True, max_queue_delay_microseconds=100))
    off = apply_trial(on, TrialConfig(dynamic_batching=False))
    assert on.HasField("dynamic_batching") and not off.HasField("dynamic_batching")


def test_batching_knobs_rejected_for_non_batching_model(nobatch):
    for trial in (TrialConfig(max_batch_size=8), TrialConfig(dynamic_batching=True)):
        with pytest.raises(BadInput, match="max_batch_size: 0"):
            apply_trial(nobatch, trial)
    assert apply_trial(nobatch, TrialConfig(instance_count=2)).instance_group[0].count == 2


@pytest.mark.parametrize(
    "trial, message",
    [
        (TrialConfig(instance_count=0), "instance_count: expected an integer from 1 to 256"),
        (TrialConfig(max_batch_size=0), "max_batch_size: expected 1"),
        (TrialConfig(dynamic_batching=False, max_queue_delay_microseconds=10), "only valid with dynamic_batching"),
        (TrialConfig(dynamic_batching=True, preferred_batch_size=(64,)), "from 1 to max_batch_size 32"),
        (TrialConfig(instance_kind="KIND_TPU"), "instance_kind: expected one of"),
    ],
)
def test_invalid_knobs_name_the_knob(mlp, trial, message):
    with pytest.raises(BadInput, match=message):
        apply_trial(mlp, trial)


def test_text_round_trip_and_json_for_load_model(mlp, tmp_path):
    rendered = apply_trial(mlp, TrialConfig(instance_count=2, dynamic_batching=True))
    path = tmp_path / "m" / "config.pbtxt"
    write_model_config(rendered, path)
    assert read_model_config(path) == rendered
    assert not list(path.parent.glob("*.tmp"))
    assert '"max_batch_size": 32' in to_json(rendered)
    assert "dynamic_batching {" in to_text(rendered)


def test_malformed_pbtxt_names_file_and_line(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(BadInput, match=r"config.pbtxt:2"):
        read_model_config(bad)


def test_missing_model_lists_available(tmp_path):
    with pytest.raises(BadInput, match="models there: mlp, mlp_nobatch"):
        load_model_config(MODEL_REPOSITORY, "nope")
    with pytest.raises(BadInput, match="not a directory"):
        load_model_config(tmp_path / "missing", "mlp")


def test_trial_of_reads_baseline(mlp, nobatch):
    assert trial_of(mlp) == TrialConfig(instance_count=1, instance_kind="KIND_CPU", max_batch_size=32,
                                        dynamic_batching=False)
    assert trial_of(nobatch).max_batch_size is None


def test_parse_set_options():
    trial = parse_set_options(["instance_count=2", "dynamic_batching=true", "instance_kind=cpu",
                               "preferred_batch_size=4,8"])
    assert trial == TrialConfig(instance_count=2, dynamic_batching=True, instance_kind="KIND_CPU",
                                preferred_batch_size=(4, 8))
    for bad, message in [("instance_count", "expected NAME=VALUE"), ("speed=3", "unknown knob 'speed'"),
                         ("instance_count=two", "expected an integer"), ("dynamic_batching=maybe", "true or false")]:
        with pytest.raises(BadInput, match=message):
            parse_set_options([bad])


def test_rendering_uses_protobuf_not_strings(mlp):
    # the rendered text parses back to an equal message: no hand-written printer can drift from it
    rendered = apply_trial(mlp, TrialConfig(dynamic_batching=True, preferred_batch_size=(2, 4)))
    again = type(mlp)()
    text_format.Parse(to_text(rendered), again)
    assert again == rendered
