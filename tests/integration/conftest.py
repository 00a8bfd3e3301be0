"""One real embedded Triton server per test session; every test module checks nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL_REPOSITORY, SESSION_PGIDS, triton_processes
from tuner.server import LocalLauncher

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
