"""The launcher contract: a launcher starts a Triton server as a context manager and hands back a Server."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tuner.server.probes import ResourceProbe


@dataclass(frozen=True)
class Server:
    """A running Triton server: its endpoints, and its process when it runs on this machine."""

    grpc_url: str
    http_url: str
    metrics_url: str | None
    pid: int | None = None
    log_path: Path | None = None
    kind: str = "local"
    details: dict[str, str] = field(default_factory=dict)
    probe: ResourceProbe | None = None  # where the server's CPU time and memory can be read
    alive: Callable[[], bool] | None = None  # overrides the pid check (containers)
    log_reader: Callable[[int], str] | None = None  # overrides reading log_path (containers)
    # Headers the model-repository API (load/unload) needs: the per-run key of a server greentune started.
    control_headers: dict[str, str] = field(default_factory=dict, repr=False)

    def is_alive(self) -> bool:
        """True while the server process runs (always True for a server we did not start)."""
        if self.alive is not None:
            return self.alive()
        if self.pid is None:
            return True
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def log_tail(self, lines: int = 8) -> str:
        """The last lines of the server's log, for error messages."""
        if self.log_reader is not None:
            return self.log_reader(lines)
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ServerLauncher(Protocol):
    """Starts a Triton server for a model repository; the server stops when the context exits."""

    name: str

    def start(self, model_repository: Path, output_dir: Path) -> contextlib.AbstractContextManager[Server]:
        """Start the server and yield it once ready; stop it (and all its processes) on exit."""
        ...


