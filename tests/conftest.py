"""Shared test helpers: paths to the example repository and a check for leftover Triton processes."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_REPOSITORY = ROOT / "model_repository"


# Process groups of servers the test session itself keeps running on purpose (the shared session server).
SESSION_PGIDS: set[int] = set()


def triton_processes() -> list[str]:
    """Command lines of tritonserver or Python-backend stub processes, except the session's own server."""
    import os

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
            found.append(f"{proc.pid}: {cmd[:160]}")
    return found


@pytest.fixture
def model_repository() -> Path:
    return MODEL_REPOSITORY
