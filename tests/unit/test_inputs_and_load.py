from __future__ import annotations

import json

import numpy as np
import pytest

from tuner.errors import BadInput
from tuner.inputs import input_specs, load_input_data, parse_shape_options, synthetic_samples
from tuner.load import LoadSpec, WindowStats, is_stable

BATCHING_META = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": ["-1", "256"]}]}
NOBATCH_META = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": ["-1", "256"]}]}


def test_batching_model_gets_batch_of_one():
    specs = input_specs(BATCHING_META, {"max_batch_size": 32}, {})
    assert specs[0].shape == (1, 256) and specs[0].datatype == "FP32"


def test_dynamic_dims_need_shape_flag():
    with pytest.raises(BadInput, match=r"--shape INPUT:4,256"):
        input_specs(NOBATCH_META, {"max_batch_size": 0}, {})
    specs = input_specs(NOBATCH_META, {"max_batch_size": 0}, {"INPUT": (3, 256)})
    assert specs[0].shape == (3, 256)
    with pytest.raises(BadInput, match="does not fit"):
        input_specs(NOBATCH_META, {"max_batch_size": 0}, {"INPUT": (3, 255)})
    with pytest.raises(BadInput, match="no input 'X'"):
        input_specs(NOBATCH_META, {"max_batch_size": 0}, {"X": (1,)})


def test_parse_shape_options():
    assert parse_shape_options(["INPUT:4,256"]) == {"INPUT": (4, 256)}
    for bad in ["INPUT", "INPUT:a,b", ":4", "INPUT:0"]:
        with pytest.raises(BadInput, match="--shape"):
            parse_shape_options([bad])


def test_synthetic_samples_are_deterministic_and_typed():
    meta = {"inputs": [{"name": "A", "datatype": "INT32", "shape": ["-1", "3"]},
                       {"name": "B", "datatype": "BYTES", "shape": ["-1", "2"]}]}
    specs = input_specs(meta, {"max_batch_size": 4}, {})
    first, again = synthetic_samples(specs, 2), synthetic_samples(specs, 2)
    assert first[0]["A"].dtype == np.int32 and first[0]["A"].shape == (1, 3)
    assert first[0]["B"].dtype == object and first[0]["B"].shape == (1, 2)
    np.testing.assert_array_equal(first[1]["A"], again[1]["A"])


def test_perf_analyzer_input_data(tmp_path):
    specs = input_specs(BATCHING_META, {"max_batch_size": 32}, {})
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"INPUT": [0.5] * 256}, {"INPUT": {"content": [1.0] * 256, "shape": [256]}}]}))
    samples = load_input_data(path, specs)
    assert len(samples) == 2 and samples[1]["INPUT"].shape == (1, 256) and samples[1]["INPUT"][0, 0] == 1.0
    path.write_text(json.dumps({"data": [{"INPUT": [1.0] * 10}]}))
    with pytest.raises(BadInput, match=r"data\[0\].INPUT: cannot shape 10 values"):
        load_input_data(path, specs)
    path.write_text("{nope")
    with pytest.raises(BadInput, match="not JSON"):
        load_input_data(path, specs)


def test_stability_rule():
    assert is_stable([100, 102, 99], [5.0, 5.1, 4.9], 0.1)
    assert not is_stable([100, 102], [5.0, 5.1], 0.1)
    assert not is_stable([100, 150, 99], [5.0, 5.1, 4.9], 0.1)
    assert not is_stable([100, 101, 99], [5.0, 9.0, 4.9], 0.1)
    assert is_stable([50, 100, 101, 99], [1.0, 5.0, 5.1, 4.9], 0.1)  # only the last three count
    assert not is_stable([0, 0, 0], [float("nan")] * 3, 0.1)


def test_window_stats():
    stats = WindowStats(duration_s=2.0, latencies_ms=[float(i) for i in range(1, 101)], failure_count=3)
    assert stats.throughput_per_s == 50.0
    assert stats.percentile_ms(50) == pytest.approx(50.5)
    assert np.isnan(WindowStats(duration_s=1.0).percentile_ms(99))


def test_load_spec_validation():
    with pytest.raises(BadInput, match="exactly one of --concurrency and --request-rate"):
        LoadSpec(concurrency=4, request_rate_per_s=10)
    with pytest.raises(BadInput, match="--concurrency: expected 1 to 4096"):
        LoadSpec(concurrency=0)
    assert LoadSpec(concurrency=None, request_rate_per_s=5).describe() == {"mode": "request_rate",
                                                                          "request_rate_per_s": 5, "engine": "builtin"}
