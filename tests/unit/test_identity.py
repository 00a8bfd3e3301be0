"""Owner identities and pid files: nothing is killed or removed unless its owner is proven dead."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.server.identity import Owner, start_ticks
from tuner.server.process import reap_leftover, write_pid_file


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_owner_roundtrip_and_liveness():
    me = Owner.current()
    assert Owner.from_dict(me.to_dict()) == me
    assert me.here() and me.is_running() and not me.proven_dead()
    assert start_ticks(os.getpid()) == me.start_ticks


def test_dead_or_reused_pid_is_proven_dead_only_in_this_boot_and_pid_namespace():
    me = Owner.current()
    gone = dataclasses.replace(me, pid=dead_pid())
    assert gone.proven_dead()
    reused = dataclasses.replace(me, start_ticks=(me.start_ticks or 0) + 1)  # my pid, another start time
    assert reused.proven_dead()
    # pid 1 of another container, another host, or no start time recorded: nothing can be proven
    assert not dataclasses.replace(gone, pid_namespace="pid:[1]").proven_dead()
    assert not dataclasses.replace(gone, boot_id="another-boot").proven_dead()
    assert not dataclasses.replace(gone, start_ticks=None).proven_dead()
    assert Owner.from_dict({"pid": "1"}) is None


def _pid_file(state: Path, owner: Owner, server_pid: int) -> Path:
    path = write_pid_file(state, server_pid, "/bin/sleep")
    record = json.loads(path.read_text())
    record["owner"] = owner.to_dict()
    path.write_text(json.dumps(record))
    return path


def test_one_pid_file_per_run_with_start_time_and_uid(tmp_path):
    with subprocess.Popen(["sleep", "30"]) as proc:
        try:
            a = write_pid_file(tmp_path, proc.pid, "/bin/sleep")
            b = write_pid_file(tmp_path, proc.pid, "/bin/sleep")
            assert a != b
            record = json.loads(a.read_text())
            assert record["server"]["start_ticks"] == str(start_ticks(proc.pid))
            assert record["server"]["uid"] == str(os.getuid()) and record["owner"]["pid"] == str(os.getpid())
        finally:
            proc.kill()


def test_reap_leaves_live_owners_and_non_triton_processes_alone(tmp_path):
    with subprocess.Popen(["sleep", "30"], start_new_session=True) as proc:
        try:
            live = _pid_file(tmp_path, Owner.current(), proc.pid)
            assert reap_leftover(tmp_path) == ([], [])
            assert live.exists() and proc.poll() is None  # its owner (this test) is alive
            live.unlink()
            dead = _pid_file(tmp_path, dataclasses.replace(Owner.current(), pid=dead_pid()), proc.pid)
            stopped, _ = reap_leftover(tmp_path)
            assert stopped == [] and proc.poll() is None  # not a tritonserver: never signalled
            assert not dead.exists()
        finally:
            proc.kill()


def test_reap_skips_a_reused_server_pid(tmp_path):
    with subprocess.Popen(["sleep", "30"], start_new_session=True) as proc:
        try:
            path = _pid_file(tmp_path, dataclasses.replace(Owner.current(), pid=dead_pid()), proc.pid)
            record = json.loads(path.read_text())
            record["server"]["start_ticks"] = str(int(record["server"]["start_ticks"]) - 1)  # pid since reused
            path.write_text(json.dumps(record))
            assert reap_leftover(tmp_path)[0] == [] and proc.poll() is None and not path.exists()
        finally:
            proc.kill()


def test_unreadable_pid_file_is_reported_not_fatal(tmp_path, monkeypatch):
    path = _pid_file(tmp_path, dataclasses.replace(Owner.current(), pid=dead_pid()), os.getpid())
    original = Path.read_text

    def refuse(self: Path, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    stopped, notes = reap_leftover(tmp_path)
    assert stopped == [] and len(notes) == 1 and "not readable" in notes[0] and str(path) in notes[0]


@pytest.mark.parametrize("content", ["{", '{"pgid": 1}'])
def test_malformed_or_old_pid_files_are_left_alone(tmp_path, content):
    (tmp_path / "server.pid.json").write_text(content)
    stopped, notes = reap_leftover(tmp_path)
    assert stopped == [] and len(notes) == 1
