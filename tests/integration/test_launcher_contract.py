"""Every launcher keeps the contract: a context manager yielding a ready server, and nothing left after it."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.conftest import MODEL_REPOSITORY, triton_processes
from tuner.model_config import load_model_config
from tuner.server import DockerLauncher, LocalLauncher, RemoteLauncher, control

pytestmark = pytest.mark.integration

DOCKER_HOST = os.environ.get("GREENTUNE_TEST_DOCKER_HOST")
IMAGE = os.environ.get("GREENTUNE_TEST_IMAGE")


def launcher(name, server):
    if name == "local":
        return LocalLauncher()
    if name == "remote":
        # the session server restricts model control to its key (as any server greentune starts)
        return RemoteLauncher(server.http_url, grpc_port=int(server.grpc_url.rsplit(":", 1)[1]),
                              control_headers=server.control_headers)
    if not (DOCKER_HOST and IMAGE):
        pytest.skip("no Docker API for tests")
    network = "bridge" if name == "docker-bridge" else "host"
    return DockerLauncher(image=IMAGE, docker_host=DOCKER_HOST, shm_size="256m", network=network)


@pytest.mark.parametrize("name", ["local", "remote", "docker", "docker-bridge"])
def test_launcher_contract(name, server, tmp_path):
    chosen = launcher(name, server)
    with chosen.start(MODEL_REPOSITORY, tmp_path) as running:
        assert running.is_alive()
        assert control.server_version(running) == "2.51.0"
        control.load_config(running, "mlp", load_model_config(MODEL_REPOSITORY, "mlp"))
        assert (running.probe is None) == (name == "remote")
    if name == "remote":
        assert server.is_alive()  # a server greentune did not start is never stopped
    else:
        assert not running.is_alive()
        assert triton_processes() == []
        if name.startswith("docker"):
            import docker.client

            client = docker.client.DockerClient(base_url=DOCKER_HOST)
            with contextlib.closing(client):
                assert client.containers.list(all=True, filters={"label": "greentune.run"}) == []
