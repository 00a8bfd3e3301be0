"""greentune compare --models on the real embedded Triton server: two sets of whole configs (the models' own, and one
with mlp at two instances) measured in interleaved pairs on one server, each model at its own load from the set file;
compare.json holds the set's energy ratio and each model's own figures, and no server is left behind."""

from __future__ import annotations

import json

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import load_model_config, to_text

pytestmark = pytest.mark.integration

MODELS = ("mlp", "mlp_nobatch")
SET_FILE = """models:
  mlp:
    concurrency: 4
    max_p99_ms: 5000
  mlp_nobatch:
    request_rate: 20
    shape: INPUT:4,256
"""


def test_two_sets_of_configs_compared_on_one_server(tmp_path):
    set_file = tmp_path / "set.yaml"
    set_file.write_text(SET_FILE)
    candidate = tmp_path / "candidate"  # as a search's output folder: <model>/config.pbtxt per model
    for model in MODELS:
        config = load_model_config(MODEL_REPOSITORY, model)
        if model == "mlp":
            config.instance_group[0].count = 2
        (candidate / model).mkdir(parents=True)
        (candidate / model / "config.pbtxt").write_text(to_text(config))
    out = tmp_path / "out"
    result = run_cli(["compare", "-r", str(MODEL_REPOSITORY), "--models", str(set_file), "--baseline",
                      str(MODEL_REPOSITORY), "--candidate", str(candidate), *FAST_FLAGS, "--idle-seconds", "0",
                      "--pairs", "2", "--max-pairs", "2", "--seed", "1", "-o", str(out)], timeout=600)
    assert result.returncode in (0, 4, 5), result.stdout + result.stderr[-2000:]
    assert result.stdout.startswith("**greentune compare: ")

    document = json.loads((out / "compare.json").read_text())
    assert document["model"] == "mlp+mlp_nobatch" and document["models"] == list(MODELS)
    assert document["pair_count"] == 2
    assert document["stop_reason"] in ("--max-pairs 2 reached", "resolved after 2 pairs")
    energy = document["ratios"]["energy_per_inference_j"]  # the set's: all joules over all inferences
    assert energy["n"] == 2 and energy["ratio"] > 0 and energy["low"] <= energy["ratio"] <= energy["high"]
    assert document["load"]["mode"] == "set"
    assert document["load"]["members"]["mlp_nobatch"]["request_rate_per_s"] == 20
    for pair in document["pairs"]:
        for side in ("baseline", "candidate"):
            measured = pair[side]
            assert set(measured["members"]) == set(MODELS)
            own = sum(m["success_count"] for m in measured["members"].values())
            assert measured["success_count"] == own  # the set's inferences are every model's
        assert pair["candidate"]["config"]["mlp"]["instance_count"] == 2
        assert pair["baseline"]["config"]["mlp"]["instance_count"] == 1
    for model in MODELS:  # each model's own figures, both sides
        figures = document["members"][model]["figures"]
        for side in ("baseline", "candidate"):
            assert figures[side]["p99_ms"]["n"] == 2 and figures[side]["p99_ms"]["mean"] > 0
            assert figures[side]["throughput_per_s"]["mean"] > 0
    nobatch = document["members"]["mlp_nobatch"]["figures"]["candidate"]["throughput_per_s"]["mean"]
    assert nobatch == pytest.approx(20, rel=0.3)  # driven at its own rate from the set file
    assert document["members"]["mlp"]["constraints"]["max_p99_ms"] == 5000
    assert "+  count: 2" in document["config_diff"] and f"+++ {candidate}/mlp/config.pbtxt" in document["config_diff"]
    text = (out / "compare.md").read_text()
    assert "| mlp | " in text and "| mlp_nobatch | " in text
    assert triton_processes() == []
