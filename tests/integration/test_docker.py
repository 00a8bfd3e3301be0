"""The docker launcher through a real Docker Engine API (Podman's socket in CI) with a locally built CPU Triton image."""

from __future__ import annotations

import contextlib
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
from tuner.server.docker import LABEL_OUTPUT, LABEL_OWNER, LABEL_RUN, owner_labels
from tuner.server.identity import Owner

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


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_doctor_cleanup_removes_only_containers_whose_owner_is_proven_dead(client):
    import dataclasses

    me = Owner.current()
    cases = {
        # a killed greentune on this host: pid gone, or reused by a process started at another time -> removed
        "greentune-leftover-dead": dataclasses.replace(me, pid=_dead_pid()),
        "greentune-leftover-reused": dataclasses.replace(me, start_ticks=(me.start_ticks or 0) + 7),
        # a second run that is alive (this test process) -> kept
        "greentune-live-run": me,
        # greentune as pid 1 in another container, or on another host (remote daemon): cannot be proven dead
        "greentune-other-container": dataclasses.replace(me, pid=1, pid_namespace="pid:[4026532999]"),
        "greentune-other-host": dataclasses.replace(me, pid=_dead_pid(), boot_id="0000-another-host"),
    }
    for name, owner in cases.items():
        client.containers.run(IMAGE, ["sleep", "300"], detach=True, name=name,
                              labels={LABEL_RUN: name, LABEL_OUTPUT: "/tmp/gone", **owner_labels(owner)})
    # an older greentune's label (owner pid only, pid 1 as in a container): never enough to remove it
    client.containers.run(IMAGE, ["sleep", "300"], detach=True, name="greentune-pid-only",
                          labels={LABEL_RUN: "pid-only", LABEL_OUTPUT: "/tmp/gone", LABEL_OWNER: "1"})
    try:
        result = run_cli(["doctor", "--cleanup", "--docker-host", str(DOCKER_HOST)])
        assert result.returncode == 0, result.stderr
        assert "removed 2 leftover container(s)" in result.stdout
        left = set(greentune_containers(client))
        assert {"greentune-leftover-dead", "greentune-leftover-reused"}.isdisjoint(left)
        assert {"greentune-live-run", "greentune-other-container", "greentune-other-host",
                "greentune-pid-only"} <= left
    finally:
        for name in [*cases, "greentune-pid-only"]:
            with contextlib.suppress(Exception):
                client.containers.get(name).remove(force=True)
    assert greentune_containers(client) == []


def test_a_second_run_never_removes_a_live_runs_container(tmp_path, client):
    """Run A (a live greentune measure) and run B (doctor --cleanup, and a measure into the same output) at once."""
    proc = subprocess.Popen([sys.executable, "-m", "tuner", "measure", "-r", str(MODEL_REPOSITORY), "-m", "mlp",
                             "-c", "2", "--window", "5", "--max-windows", "8", *DOCKER, "-o", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not greentune_containers(client):
            time.sleep(0.3)
        (name,) = greentune_containers(client)
        attrs = client.containers.get(name).attrs
        # least privilege: no capabilities, no-new-privileges, the caller's uid:gid
        dropped = [c.upper().removeprefix("CAP_") for c in attrs["HostConfig"].get("CapDrop") or []]
        assert "ALL" in dropped or {"CHOWN", "NET_RAW", "SETUID", "DAC_OVERRIDE"} <= set(dropped), dropped
        assert any("no-new-privileges" in o for o in attrs["HostConfig"]["SecurityOpt"] or [])
        assert attrs["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"
        cleanup = run_cli(["doctor", "--cleanup", "--docker-host", str(DOCKER_HOST)])
        assert cleanup.returncode == 0 and "removed 0 leftover" in cleanup.stdout, cleanup.stdout + cleanup.stderr
        assert name in greentune_containers(client)
        _, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=90)
    assert greentune_containers(client) == []
