"""Shared test helpers: paths to the example repository and a check for leftover Triton processes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"


# Process groups of servers the test session itself keeps running on purpose (the shared session server).
SESSION_PGIDS: set[int] = set()

# Every process this test session starts inherits this mark (greentune passes its environment on to tritonserver,
# and the server to its Python-backend stubs), so the leftover checks see only what this session started: another
# user's server, or another test run's, on the same machine is not a leftover of ours.
SESSION_MARK_ENV = "GREENTUNE_TEST_SESSION"
SESSION_MARK = os.environ.setdefault(SESSION_MARK_ENV, uuid.uuid4().hex)


def started_by_this_session(proc: psutil.Process) -> bool:
    """True when the process carries this session's mark in its environment (unreadable: not ours to judge)."""
    try:
        return proc.environ().get(SESSION_MARK_ENV) == SESSION_MARK
    except (psutil.Error, OSError):
        return False


def triton_processes() -> list[str]:
    """Command lines of tritonserver or Python-backend stub processes this test session started, except the
    session's own server (processes of other users and other runs on the machine are not looked at)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            name = proc.info["name"] or ""
            cmd = " ".join(proc.info["cmdline"] or [])
            if os.getpgid(proc.pid) in SESSION_PGIDS:
                continue
        except (psutil.Error, ProcessLookupError):
            continue
        if name == "tritonserver" or "triton_python_backend_stub" in cmd or cmd.split(" ")[0].endswith("/tritonserver"):
            if started_by_this_session(proc):
                found.append(f"{proc.pid}: {cmd[:160]}")
    return found


@pytest.fixture
def model_repository() -> Path:
    return MODEL_REPOSITORY
