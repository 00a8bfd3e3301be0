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


SHM = Path("/dev/shm")
SHM_PATTERN = "triton_python_backend_shm_region_*"


def shm_regions() -> set[str]:
    """Python-backend shared-memory regions in /dev/shm owned by this user (another user's are never ours)."""
    return {p.name for p in SHM.glob(SHM_PATTERN) if _owned(p)}


def _owned(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def mapped_shm() -> set[str]:
    """Regions some live process still maps (a live server's or stub's, this run's or another's)."""
    mapped = set()
    for proc in psutil.process_iter():
        try:
            for region in proc.memory_maps(grouped=True):
                if region.path.startswith(str(SHM / "triton_python_backend_shm_region_")):
                    mapped.add(Path(region.path).name)
        except (psutil.Error, OSError):
            continue
    return mapped


def leaked_shm(before: set[str]) -> set[str]:
    """Regions this user gained since `before` that no live process maps: left behind by a dead server or stub.
    One that another run's live server maps is that run's, not a leak of ours."""
    return (shm_regions() - before) - mapped_shm()


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
