"""Several models tuned together on one real embedded Triton server (search --models)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import read_model_config
from tuner.results import SetConfig, TrialResult
from tuner.server import control

pytestmark = pytest.mark.integration

SET_FILE = """
models:
  mlp:
    concurrency: 4
    max_p99_ms: {mlp_p99}
  mlp_nobatch:
    request_rate: 30
    max_p99_ms: {nobatch_p99}
    shape: INPUT:4,256
"""


def _set_file(tmp_path, mlp_p99: float = 500, nobatch_p99: float = 500):
    path = tmp_path / "set.yaml"
    path.write_text(SET_FILE.format(mlp_p99=mlp_p99, nobatch_p99=nobatch_p99))
    return path


def _search(set_file, out, *extra: str):
    return run_cli(["search", "-r", str(MODEL_REPOSITORY), "--models", str(set_file), "--space", "cpu", *FAST_FLAGS,
                    "--idle-seconds", "1", "-o", str(out), *extra], timeout=600)


def test_two_models_searched_together_export_both_configs_and_report_what_sharing_saves(tmp_path, server):
    out = tmp_path / "out"
    result = _search(_set_file(tmp_path), out, "--trials", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    for model in ("mlp", "mlp_nobatch"):  # one config per model, each one the real server loads
        control.load_config(server, model, read_model_config(out / model / "config.pbtxt"))
    control.unload(server, "mlp_nobatch")  # another test's model: its stubs are not the session's business

    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "mlp+mlp_nobatch" and summary["status"] == "feasible"
    assert summary["load"]["mode"] == "set"
    assert summary["load"]["members"]["mlp_nobatch"] == {"mode": "request_rate", "request_rate_per_s": 30,
                                                         "engine": "builtin"}
    assert set(summary["models"]) == {"mlp", "mlp_nobatch"}
    assert summary["models"]["mlp"]["exported_config"] == str(out / "mlp" / "config.pbtxt")
    best = TrialResult.from_dict({**summary["best"], "number": summary["best"]["trial"]})
    assert isinstance(best.config, SetConfig) and best.config.models == ("mlp", "mlp_nobatch")
    m = best.measurement
    assert m is not None and set(m.members) == {"mlp", "mlp_nobatch"}
    # The set's figures are every model's: all inferences over the server's joules, over the same windows.
    assert m.success_count == sum(member.success_count for member in m.members.values())
    assert m.throughput_per_s.mean == pytest.approx(sum(x.throughput_per_s.mean for x in m.members.values()))
    assert m.energy_source == "estimated" and m.energy_j and m.success_count / m.energy_j == pytest.approx(
        m.inferences_per_j.mean, rel=0.1)
    assert m.members["mlp_nobatch"].throughput_per_s.mean == pytest.approx(30, rel=0.1)  # its own open-loop rate
    assert all(member.energy_j is None for member in m.members.values())  # joules are the set's, never split

    sharing = summary["sharing"]
    assert sharing["basis"] == "best" and sharing["trial"] == best.number
    assert set(sharing["alone"]) == {"mlp", "mlp_nobatch"}
    assert all(alone["energy_source"] == "estimated" and alone["joules_per_inference"] > 0
               for alone in sharing["alone"].values())
    assert sharing["separate_power_w"] == pytest.approx(
        sum(a["power_at_set_rate_w"] for a in sharing["alone"].values()))
    assert sharing["saving_fraction"] == pytest.approx(1 - sharing["together"]["power_w"] / sharing["separate_power_w"])

    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and {"mlp/instance_count", "mlp_nobatch/instance_count", "mlp/p99_ms",
                                 "mlp_nobatch/throughput_per_s"} <= set(trials.columns)
    keys = [json.dumps(TrialResult.from_dict(json.loads(p.read_text())["trial"]).config.knobs(), sort_keys=True)
            for p in sorted((out / "trials").glob("trial-*.json"))]
    assert len(keys) == 3 and len(set(keys)) == 3  # the set's configs are deduped as one config
    assert "mlp_nobatch" in (out / "report.md").read_text()

    resumed = _search(_set_file(tmp_path), out, "--trials", "4", "--resume", "--sharing", "off")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["trial_count"] == 4 and again["sharing"] is None

    exported = run_cli(["export", str(out), "--trial", "0", "--no-verify"])  # a set's trial: every model's config
    assert exported.returncode == 0, exported.stderr[-2000:]
    own = read_model_config(out / "mlp_nobatch" / "trial-0" / "config.pbtxt")
    assert own.instance_group[0].count == 1 and own.max_batch_size == 0
    assert triton_processes() == []


def test_a_set_whose_model_cannot_meet_its_limit_exits_3_naming_the_model_and_limit(tmp_path):
    out = tmp_path / "out"
    result = _search(_set_file(tmp_path, nobatch_p99=0.01), out, "--trials", "2", "--sharing", "off")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "mlp_nobatch/max_p99_ms" in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "no_feasible_config"
    assert summary["closest_infeasible"]["most_violated"] == "mlp_nobatch/max_p99_ms"
    assert summary["models"]["mlp"]["baseline"]["violations"]["max_p99_ms"] < 0  # mlp itself holds its limit
    assert not (out / "mlp" / "config.pbtxt").exists() and not (out / "mlp_nobatch" / "config.pbtxt").exists()
    assert triton_processes() == []
