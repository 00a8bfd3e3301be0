"""The leftover check itself: it sees the servers and stubs this test session starts, and nothing another run started."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from tests.conftest import MODEL_REPOSITORY, SESSION_MARK_ENV, SESSION_PGIDS, started_by_this_session, triton_processes
from tests.integration.conftest import SHM, leaked_shm, shm_regions
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


def test_a_region_another_runs_live_process_maps_is_not_a_leak_an_unmapped_new_one_is(tmp_path):
    """Another run's live server maps its shared-memory region: not ours. A new region nobody maps: a leak."""
    before = shm_regions()
    theirs = SHM / f"triton_python_backend_shm_region_test_theirs_{os.getpid()}"
    ours = SHM / f"triton_python_backend_shm_region_test_leak_{os.getpid()}"
    holder = None
    try:
        theirs.write_bytes(b"\0" * 4096)
        holder = subprocess.Popen([sys.executable, "-c", (
            "import mmap, sys, time; f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 4096); "
            "print('mapped', flush=True); time.sleep(60)"), str(theirs)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, SESSION_MARK_ENV: "another-run"})
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
        assert leaked_shm(before) == set()
        ours.write_bytes(b"\0" * 4096)
        assert leaked_shm(before) == {ours.name}
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        theirs.unlink(missing_ok=True)
        ours.unlink(missing_ok=True)
