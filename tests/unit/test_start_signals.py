"""A SIGINT delivered during the start call itself (Popen, containers.run) never orphans the server it started."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tuner.server import docker as docker_launcher
from tuner.server.docker import DockerLauncher
from tuner.server.embedded import TritonInstall
from tuner.server.local import LocalLauncher


def test_sigint_during_popen_stops_the_process_it_started(tmp_path, monkeypatch):
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\nexec sleep 120\n")  # stands in for the binary: a real process to orphan
    binary.chmod(0o755)
    real_popen = subprocess.Popen
    started: list[subprocess.Popen[bytes]] = []

    def popen_then_sigint(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while Popen is still returning
        return proc

    monkeypatch.setattr(subprocess, "Popen", popen_then_sigint)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with LocalLauncher(install=TritonInstall(binary), ready_timeout_s=30).start(tmp_path, out):
            pytest.fail("the start was interrupted; no server may be handed out")
    monkeypatch.undo()
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped and reaped, not left running
    assert not list((out / ".greentune").glob("*.pid.json"))  # its pid file went with it


class FakeContainer:
    name = "greentune-fake"
    status = "running"

    def __init__(self) -> None:
        self.removed = False

    def remove(self, force: bool = False) -> None:
        self.removed = True

    def logs(self, **kwargs) -> bytes:
        return b"container log\n"

    def reload(self) -> None:
        pass


class FakeContainers:
    def __init__(self) -> None:
        self.created: list[FakeContainer] = []

    def run(self, image, command, **kwargs) -> FakeContainer:
        container = FakeContainer()
        self.created.append(container)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C lands while the Engine API call is still returning
        return container

    def list(self, all: bool = False, filters=None) -> list[FakeContainer]:
        return []


class FakeImages:
    def get(self, image: str) -> object:
        return object()


class FakeClient:
    """The Docker SDK client's surface the launcher uses (the Engine API is the boundary faked here)."""

    def __init__(self) -> None:
        self.containers = FakeContainers()
        self.images = FakeImages()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_sigint_during_containers_run_removes_the_container_it_started(tmp_path, monkeypatch):
    client = FakeClient()
    monkeypatch.setattr(docker_launcher, "docker_client", lambda docker_host=None: client)
    with pytest.raises(KeyboardInterrupt):
        with DockerLauncher(image="localhost/triton:test").start(tmp_path, tmp_path / "out"):
            pytest.fail("the start was interrupted; no server may be handed out")
    assert len(client.containers.created) == 1 and client.containers.created[0].removed
    assert client.closed
    assert (tmp_path / "out" / "tritonserver.log").read_bytes() == b"container log\n"
