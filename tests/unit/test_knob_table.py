"""The knob table is the one definition of the knobs: TrialConfig, the space schema, --set and trials.csv agree."""

from __future__ import annotations

import dataclasses

import pytest

from tuner.errors import BadInput
from tuner.model_config import parse_set_options
from tuner.outputs import trials_frame
from tuner.results import KNOB_SPECS, KNOB_TABLE, KNOBS, TrialConfig, TrialResult
from tuner.space import IMPLIED_CONDITION, parse_space


def test_trial_config_fields_are_the_knob_table_in_order():
    assert tuple(f.name for f in dataclasses.fields(TrialConfig)) == KNOBS == tuple(k.name for k in KNOB_TABLE)


def test_trials_csv_has_a_column_per_knob():
    frame = trials_frame([TrialResult(0, TrialConfig(instance_count=2), None, "refused")], None)
    assert list(frame.columns[2:2 + len(KNOBS)]) == list(KNOBS)


def test_trials_csv_names_the_load_engine_of_each_measurement():
    from tests.unit.test_search_loop import fake_measurement

    results = [TrialResult(n, TrialConfig(instance_count=n + 1),
                           fake_measurement(TrialConfig(instance_count=n + 1), 20.0,
                                            {"mode": "concurrency", "concurrency": 32, "engine": engine}))
               for n, engine in enumerate(["perf_analyzer", "builtin"])]
    frame = trials_frame(results, None)
    assert frame["load_engine"].tolist() == ["perf_analyzer", "builtin"]
    assert frame["concurrency"].tolist() == [32, 32]


def test_space_schema_reads_types_ranges_and_conditions_from_the_table():
    assert IMPLIED_CONDITION == {"max_queue_delay_microseconds": "dynamic_batching",
                                 "preferred_batch_size": "dynamic_batching"}
    count = KNOB_SPECS["instance_count"]
    with pytest.raises(BadInput, match=f"expected values from {count.low} to {count.high}"):
        parse_space({"knobs": {"instance_count": {"type": "int", "low": 1, "high": count.high + 1}}}, "s.yaml")
    space = parse_space({"knobs": {"instance_count": {"low": 1, "high": count.high}}}, "s.yaml")
    assert space.knobs[0].type == count.space_type


def test_set_hints_come_from_the_table():
    for spec in KNOB_TABLE:
        if spec.name == "instance_count":
            continue
        with pytest.raises(BadInput) as error:
            parse_set_options([f"{spec.name}=?"])
        assert str(error.value) == f"--set {spec.name}=?: expected {spec.set_hint}"


def test_loop_rules_paths_and_events_are_pure():
    import subprocess
    import sys

    code = (
        "import sys; import tuner.stopping, tuner.paths, tuner.events;"
        "bad = [m for m in ('docker', 'pynvml', 'subprocess', 'tritonclient.grpc.aio', 'tritonclient.http', 'psutil',"
        " 'optuna') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
