"""The docker launcher through a real Docker Engine API (Podman's socket in CI) with a locally built CPU Triton image."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import MODEL_REPOSITORY
from tests.integration.conftest import FAST_FLAGS, run_cli
from tuner.model_config import read_model_config
from tuner.server import control
from tuner.server.docker import LABEL_OUTPUT, LABEL_OWNER, LABEL_RUN

pytestmark = [pytest.mark.integration, pytest.mark.docker]

DOCKER_HOST = os.environ.get("GREENTUNE_TEST_DOCKER_HOST")
IMAGE = os.environ.get("GREENTUNE_TEST_IMAGE")
if not (DOCKER_HOST and IMAGE):
    if os.environ.get("GREENTUNE_REQUIRE_DOCKER"):
        raise RuntimeError("GREENTUNE_REQUIRE_DOCKER is set but GREENTUNE_TEST_DOCKER_HOST/GREENTUNE_TEST_IMAGE are not")
    pytest.skip("no Docker API for tests (scripts/test.sh sets one up where podman is installed)",
                allow_module_level=True)

DOCKER = ["--launcher", "docker", "--docker-host", str(DOCKER_HOST), "--image", str(IMAGE), "--shm-size", "256m"]


@pytest.fixture(scope="module")
def client():
    import docker.client

    c = docker.client.DockerClient(base_url=DOCKER_HOST)
    yield c
    c.close()


def greentune_containers(client) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": LABEL_RUN})]


def test_docker_search_exports_a_loadable_config_and_leaves_no_container(tmp_path, client, server):
    result = run_cli(["search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "--trials", "3", "-c", "4",
                      "--idle-seconds", "1", *FAST_FLAGS, *DOCKER, "-o", str(tmp_path)])
    assert result.returncode == 0, result.stderr[-3000:]
    config = read_model_config(tmp_path / "mlp" / "config.pbtxt")
    control.load_config(server, "mlp", config)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trial_count"] == 3
    assert summary["best"]["measurement"]["memory_source"] == "container memory (Docker stats)"
    assert summary["best"]["measurement"]["energy_source"] == "estimated"  # from the container's CPU time
    assert summary["environment"]["triton_binary"] == f"docker image {IMAGE}"
    assert "Started GRPCInferenceService" in (tmp_path / "tritonserver.log").read_text()
    assert greentune_containers(client) == []


def test_no_docker_api_is_one_line_exit_2(tmp_path):
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--launcher", "docker",
                      "--docker-host", f"unix://{tmp_path}/missing.sock", "--image", str(IMAGE), "-o", str(tmp_path)])
    assert result.returncode == 2
    assert "no Docker Engine API at unix://" in result.stderr and "Traceback" not in result.stderr


def test_missing_image_names_it_and_the_login_hint(tmp_path, client):
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--launcher", "docker",
                      "--docker-host", str(DOCKER_HOST), "--image", "registry.invalid/none/triton:0", "-o",
                      str(tmp_path)], timeout=180)
    assert result.returncode == 2, result.stderr
    assert "--image registry.invalid/none/triton:0: not present locally and the pull failed" in result.stderr
    assert "docker login registry.invalid" in result.stderr
    assert greentune_containers(client) == []


def test_container_exiting_during_start_shows_its_log(tmp_path, client):
    dockerfile = (f"FROM {IMAGE}\n"
                  "RUN printf '#!/bin/sh\\necho simulated start failure: no GPU driver >&2\\nexit 3\\n' "
                  "> /opt/tritonserver/bin/tritonserver\n")
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag="localhost/greentune-broken:test", rm=True)
    result = run_cli(["measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--launcher", "docker",
                      "--docker-host", str(DOCKER_HOST), "--image", "localhost/greentune-broken:test",
                      "-o", str(tmp_path)])
    assert result.returncode == 1, result.stderr
    assert "container exited during start" in result.stderr
    assert "simulated start failure: no GPU driver" in result.stderr
    assert greentune_containers(client) == []


def test_ctrl_c_removes_the_container(tmp_path, client):
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp",
                             "-c", "2", "--window", "5", *DOCKER, "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not greentune_containers(client):
        time.sleep(0.3)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr
    assert greentune_containers(client) == []


def test_doctor_cleanup_removes_containers_of_killed_runs(client):
    client.containers.run(IMAGE, ["sleep", "300"], detach=True, name="greentune-leftover-test",
                          labels={LABEL_RUN: "leftover", LABEL_OUTPUT: "/tmp/gone", LABEL_OWNER: "999999"})
    assert "greentune-leftover-test" in greentune_containers(client)
    result = run_cli(["doctor", "--cleanup", "--docker-host", str(DOCKER_HOST)])
    assert result.returncode == 0, result.stderr
    assert "removed 1 leftover container(s): greentune-leftover-test" in result.stdout
    assert greentune_containers(client) == []
