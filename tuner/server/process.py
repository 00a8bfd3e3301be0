"""Process-group glue for servers we start: stop the whole group, clean leaked shm, find leftovers by pid file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from tuner.errors import BadInput
from tuner.fileio import atomic_write
from tuner.server.identity import Owner

SHM_PREFIX = "triton_python_backend_shm_region_"
PID_FILE = "server.pid.json"  # the one shared file older versions wrote
PID_SUFFIX = ".pid.json"


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a server is started or stopped, then act on them: no half-started server.

    Handlers (not the signal mask) are swapped, so child processes started inside inherit nothing unusual.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            handler = previous[signal.Signals(received[0])]
            if callable(handler):
                handler(received[0], None)
            elif received[0] == signal.SIGINT and handler == signal.SIG_DFL:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), received[0])


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that are free right now (the OS picks them)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            ports.append(sock.getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
    return ports


def port_in_use(port: int) -> bool:
    """True when something already listens on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports(ports: tuple[int, int, int]) -> tuple[int, int, int]:
    """--ports HTTP,GRPC,METRICS as given, or BadInput naming the one already in use."""
    for name, port in zip(("HTTP", "gRPC", "metrics"), ports, strict=True):
        if port_in_use(port):
            raise BadInput(f"--ports: {name} port {port} is already in use on 127.0.0.1; pick free ports or leave "
                           "--ports out (greentune then picks free ones)")
    return ports


def group_processes(pgid: int) -> list[psutil.Process]:
    """Live processes in a process group."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def shm_regions_of(processes: list[psutil.Process]) -> set[str]:
    """Names of the Python-backend shm regions that these stub processes use (from their command lines)."""
    names = set()
    for proc in processes:
        try:
            for arg in proc.cmdline():
                if arg.startswith(SHM_PREFIX):
                    names.add(arg)
        except psutil.Error:
            continue
    return names


def remove_shm(names: set[str], shm_dir: Path = Path("/dev/shm")) -> None:
    """Remove leaked shm regions (the stub's region and its per-instance suffixes)."""
    for name in names:
        for path in shm_dir.glob(f"{name}*"):
            try:
                path.unlink()
            except OSError:
                pass


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the group, wait up to grace_s, then SIGKILL whatever is left (stubs ignore SIGTERM)."""
    members = group_processes(pgid)
    shm = shm_regions_of(members)
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        members = group_processes(pgid)
        if not members:
            break
        # Once the server itself has gone, remaining stubs will never exit on their own.
        if not any("tritonserver" in _name(p) for p in members):
            break
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while group_processes(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    remove_shm(shm)


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return ""


def write_pid_file(state_dir: Path, pgid: int, binary: str) -> Path:
    """Record a server we started (one file per run), so a later run can stop it if this process is killed.

    The file holds the server's pid and start time and the owner's identity (boot id, pid namespace, pid, start
    time, uid): reap_leftover compares them before it kills anything.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    server = Owner.of(pgid)
    path = state_dir / f"server-{os.getpid()}-{uuid.uuid4().hex[:8]}{PID_SUFFIX}"
    record = {"pgid": pgid, "binary": binary, "server": server.to_dict() if server else None,
              "owner": Owner.current().to_dict()}
    atomic_write(path, json.dumps(record))
    return path


def reap_leftover(state_dir: Path) -> tuple[list[int], list[str]]:
    """Stop servers left by killed earlier runs in this output folder.

    Returns (stopped process groups, notes). A server is stopped only when its owner is proven dead (same boot and
    pid namespace, pid gone or reused) and the process group leader is still the recorded server: same start time,
    same uid, a tritonserver. What cannot be read, removed or signalled (another user's files) becomes a note.
    """
    stopped: list[int] = []
    notes: list[str] = []
    try:
        paths = sorted(state_dir.glob(f"*{PID_SUFFIX}"))  # includes the older shared server.pid.json
    except OSError as exc:
        return stopped, [f"{state_dir}: cannot list pid files ({exc.strerror or exc})"]
    for path in paths:
        try:
            record = json.loads(path.read_text())
            pgid = int(record["pgid"])
        except PermissionError as exc:
            notes.append(f"{path}: not readable ({exc.strerror}); left alone")
            continue
        except (ValueError, KeyError, TypeError, OSError):
            notes.append(f"{path}: unreadable pid file; left alone")
            continue
        owner = Owner.from_dict(record.get("owner") or {})
        server = Owner.from_dict(record.get("server") or {})
        if owner is None or server is None:
            notes.append(f"{path}: written by an older greentune (no owner identity); left alone")
            continue
        if not owner.proven_dead():
            continue  # a live greentune, or one this process cannot see (another container or host)
        if server.is_running():
            if server.uid != os.getuid() and os.getuid() != 0:
                notes.append(f"{path}: server {pgid} belongs to uid {server.uid}; left alone")
                continue
            members = group_processes(pgid)
            if any("tritonserver" in _name(p) or "triton_python" in _name(p) for p in members):
                try:
                    stop_group(pgid, grace_s=2.0)
                    stopped.append(pgid)
                except PermissionError as exc:
                    notes.append(f"{path}: cannot stop server {pgid} ({exc.strerror}); left alone")
                    continue
        try:
            path.unlink(missing_ok=True)
        except PermissionError as exc:
            notes.append(f"{path}: cannot remove ({exc.strerror})")
    return stopped, notes
