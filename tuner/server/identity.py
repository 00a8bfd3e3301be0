"""Who owns a server: enough to prove, later and from another process, that the owner is dead.

A pid alone proves nothing: pids are reused, and every process in its own container is pid 1. An owner is
the kernel's boot id, the pid namespace, the pid, the process's start time (clock ticks since boot, from
/proc/PID/stat) and its uid. Another run may clean up after an owner only when it sees the same boot and the
same pid namespace and that pid is gone (the kernel says no such process) or now belongs to a process started at
another time; anything it cannot check (another host, another container, another user's process hidden by
/proc's hidepid) counts as alive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"


def boot_id() -> str:
    """This kernel's boot id (shared by containers on the host, new after every reboot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or UNKNOWN
    except OSError:
        return UNKNOWN


def pid_namespace() -> str:
    """This process's pid namespace, e.g. 'pid:[4026531836]' (differs between containers)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return UNKNOWN


def start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot, /proc/PID/stat field 22); None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] here is field 3 (state)
    except (IndexError, ValueError):
        return None


def pid_exists(pid: int) -> bool:
    """True unless the kernel says no process has this pid; EPERM (another user's process) means it exists."""
    if pid <= 0:
        return True  # 0 and negative pids name process groups: nothing about one process is proven
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_uid(pid: int) -> int | None:
    """The real uid of a process, or None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None


@dataclass(frozen=True)
class Owner:
    """A process identity that survives pid reuse and pid namespaces."""

    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: int | None
    uid: int

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(boot_id(), pid_namespace(), pid, start_ticks(pid), os.getuid())

    @classmethod
    def of(cls, pid: int) -> Owner | None:
        """Another process in this pid namespace, or None when it does not exist."""
        ticks = start_ticks(pid)
        uid = process_uid(pid)
        if ticks is None or uid is None:
            return None
        return cls(boot_id(), pid_namespace(), pid, ticks, uid)

    def to_dict(self) -> dict[str, str]:
        """As strings (for container labels and pid files)."""
        return {"boot_id": self.boot_id, "pid_namespace": self.pid_namespace, "pid": str(self.pid),
                "start_ticks": "" if self.start_ticks is None else str(self.start_ticks), "uid": str(self.uid)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner | None:
        """Parse what to_dict wrote; None when something is missing or malformed (then nothing is proven)."""
        try:
            ticks = str(data.get("start_ticks", ""))
            return cls(str(data["boot_id"]), str(data["pid_namespace"]), int(data["pid"]),
                       int(ticks) if ticks else None, int(data["uid"]))
        except (KeyError, TypeError, ValueError):
            return None

    def here(self) -> bool:
        """True when this identity was recorded in this boot and this pid namespace (so its pid can be checked)."""
        return (UNKNOWN not in (self.boot_id, self.pid_namespace) and self.boot_id == boot_id()
                and self.pid_namespace == pid_namespace())

    def is_running(self) -> bool:
        """The same process (pid and start time) is seen running (its /proc/PID/stat read and matching)."""
        ticks = start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)

    def proven_dead(self) -> bool:
        """True only when this host and pid namespace can show the process is gone (pid free or reused)."""
        if not self.here() or self.start_ticks is None:
            return False
        if not pid_exists(self.pid):
            return True
        # The pid is taken: only a start time read from /proc and differing proves reuse. An unreadable stat (hidepid
        # hides other users' processes, as ENOENT or EACCES) proves nothing.
        ticks = start_ticks(self.pid)
        return ticks is not None and ticks != self.start_ticks

    def is_callers(self) -> bool:
        """True when this owner ran as the calling user, or the caller is root (who may clean up for anyone)."""
        return os.getuid() in (0, self.uid)
