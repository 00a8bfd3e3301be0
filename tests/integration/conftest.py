"""One real embedded Triton server per test session; every test module checks nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import MODEL_REPOSITORY, SESSION_PGIDS, triton_processes
from tuner.server import LocalLauncher
from tuner.server.process import reap_leftover

pytestmark = pytest.mark.integration

# Short windows keep the suite quick; stability still needs 3 agreeing windows.
FAST_FLAGS = ["--warmup", "0.5", "--window", "1", "--max-windows", "6", "--stability", "0.25", "--load-generator", "builtin"]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("server")
    with LocalLauncher(ready_timeout_s=120).start(MODEL_REPOSITORY, out) as running:
        assert running.pid is not None
        SESSION_PGIDS.add(running.pid)
        yield running
    SESSION_PGIDS.discard(running.pid)
    assert triton_processes() == []


@pytest.fixture(scope="module", autouse=True)
def no_leftovers_at_module_end():
    """Every integration module ends with no tritonserver or stub left (the session server aside)."""
    yield
    assert triton_processes() == [], "left behind by this module"


def run_cli(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess[str]:
    """Run the real greentune console script in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "160"},
        **kwargs,
    )


def shm_regions() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("triton_python_backend_shm_region_*")}


@pytest.fixture(autouse=True)
def stop_what_the_test_started(tmp_path):
    """After each test, even a failed one: stop the greentune processes it started (this session's own children)
    and any server whose pid file lies in its folder; never anything found by name."""
    yield
    children = [p for p in psutil.Process().children() if p.pid not in SESSION_PGIDS]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()  # greentune stops its own server on SIGTERM
    _, alive = psutil.wait_procs(children, timeout=60)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    for state_dir in tmp_path.rglob(".greentune"):
        reap_leftover(state_dir)
