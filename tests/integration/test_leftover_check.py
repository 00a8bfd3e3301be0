"""The leftover check itself: it sees the servers and stubs this test session starts, and nothing another run started."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from tests.conftest import MODEL_REPOSITORY, SESSION_MARK_ENV, SESSION_PGIDS, started_by_this_session, triton_processes
from tuner.model_config import load_model_config
from tuner.server import control


def test_a_server_this_session_started_and_its_stubs_are_seen_another_runs_are_not(server):
    control.load_config(server, "mlp", load_model_config(MODEL_REPOSITORY, "mlp"))  # a stub for the model
    proc = psutil.Process(server.pid)
    stubs = [c for c in proc.children(recursive=True) if "triton_python_backend_stub" in " ".join(c.cmdline())]
    assert started_by_this_session(proc) and stubs and all(started_by_this_session(s) for s in stubs)
    SESSION_PGIDS.discard(server.pid)  # as if it were a leftover: the check must name it
    try:
        assert any(line.startswith(f"{server.pid}:") for line in triton_processes())
    finally:
        SESSION_PGIDS.add(server.pid)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"],
                             env={**os.environ, SESSION_MARK_ENV: "another-run"})
    try:
        assert not started_by_this_session(psutil.Process(other.pid))
    finally:
        other.kill()
        other.wait()
