"""Launch tritonserver as a local process group with explicit model control on free loopback ports."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tuner.errors import ServerStartError
from tuner.redact import remember
from tuner.server.base import Server
from tuner.server.embedded import TritonInstall, find_triton
from tuner.server.probes import ProcessTreeProbe
from tuner.server.process import (
    check_ports,
    free_ports,
    reap_leftover,
    signals_deferred,
    stop_group,
    write_pid_file,
)

STATE_DIR = ".greentune"
logger = logging.getLogger("greentune")


class LocalLauncher:
    """Runs tritonserver on this machine: --tritonserver PATH, tritonserver on PATH, or the embedded build."""

    name = "local"

    def __init__(
        self,
        tritonserver: Path | None = None,
        ready_timeout_s: float = 120.0,
        extra_args: tuple[str, ...] = (),
        install: TritonInstall | None = None,
        gpus: list[int] | None = None,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        self.tritonserver = tritonserver
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args
        self._install = install
        self.gpus = gpus
        self.ports = ports

    def install(self) -> TritonInstall:
        """The binary this launcher will run (found once)."""
        if self._install is None:
            self._install = find_triton(self.tritonserver)
        return self._install

    @contextlib.contextmanager
    def start(self, model_repository: Path, output_dir: Path) -> Iterator[Server]:
        """Start tritonserver, wait until ready, yield it; always stop the whole process group."""
        install = self.install()
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state_dir = output_dir / STATE_DIR
        for note in reap_leftover(state_dir)[1]:
            logger.warning("leftover server: %s", note)  # reported, never fatal for this run
        http_port, grpc_port, metrics_port = check_ports(self.ports) if self.ports else free_ports(3)
        log_path = output_dir / "tritonserver.log"
        control_headers = new_control_key()
        cmd = [str(install.binary),
               *triton_args(str(Path(model_repository).resolve()), http_port, grpc_port, metrics_port,
                            control_headers),
               *self.extra_args]
        if install.backend_directory is not None:
            cmd.append(f"--backend-directory={install.backend_directory}")
        env = {**os.environ, **install.env}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in self.gpus)
        with contextlib.ExitStack() as cleanup:
            pid_files: list[Path] = []
            with signals_deferred(), open(log_path, "ab") as log:
                # Started and recorded with Ctrl-C held, so an interrupt cannot fall between the two; the stop is
                # registered before the held signal is re-raised, so a signal during Popen cannot orphan the server.
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
                )
                cleanup.callback(_stop, proc, pid_files)
                pid_files.append(write_pid_file(state_dir, proc.pid, str(install.binary)))
            server = Server(
                grpc_url=f"127.0.0.1:{grpc_port}",
                http_url=f"http://127.0.0.1:{http_port}",
                metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
                pid=proc.pid,
                log_path=log_path,
                kind="local",
                details={"binary": str(install.binary), "source": install.source},
                probe=ProcessTreeProbe(proc.pid),
                control_headers=control_headers,
            )
            wait_ready(server, self.ready_timeout_s, proc)
            yield server


def _stop(proc: subprocess.Popen[bytes], pid_files: list[Path]) -> None:
    """Stop the server's whole process group (signals held meanwhile) and forget its pid file."""
    with signals_deferred():
        stop_group(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pid_file in pid_files:
            pid_file.unlink(missing_ok=True)


CONTROL_HEADER = "greentune-control-key"


def new_control_key() -> dict[str, str]:
    """A random per-run key for Triton's model-repository API, as the header greentune sends (tuner.redact knows it)."""
    key = secrets.token_urlsafe(24)
    remember(key)
    return {CONTROL_HEADER: key}


# Triton's APIs only the key's holder may call: model-repository (load can carry code), and shared-memory, logging
# and trace, which greentune never calls (registering system shared memory makes the server open and map any
# /dev/shm object greentune's user can; logging and trace settings rewrite files and verbosity). Triton 2.51's
# category names; --http-restricted-api and --grpc-restricted-protocol take them comma-separated before the ':'.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")


def restricted_args(control_headers: dict[str, str]) -> list[str]:
    """Restrict model load/unload, shared memory, logging and trace on both endpoints to requests carrying the key;
    inference, health, metadata, model config and statistics stay open, so load generators and perf_analyzer
    need no key."""
    apis = ",".join(RESTRICTED_APIS)
    return [arg for key, value in control_headers.items()
            for arg in (f"--grpc-restricted-protocol={apis}:{key}={value}",
                        f"--http-restricted-api={apis}:{key}={value}")]


def triton_args(model_repository: str, http_port: int, grpc_port: int, metrics_port: int,
                control_headers: dict[str, str] | None = None) -> list[str]:
    """tritonserver flags greentune always uses: explicit model control, loopback endpoints on these ports, and the
    model-repository, shared-memory, logging and trace APIs restricted to the holder of the per-run key."""
    return [*restricted_args(control_headers or {}),
        f"--model-repository={model_repository}",
        "--model-control-mode=explicit",
        "--log-verbose=0",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
    ]


def wait_ready(server: Server, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll /v2/health/ready until it answers 200; raise ServerStartError with the log tail on death or timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerStartError(
                f"tritonserver exited with status {proc.returncode} during start; last log lines:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise ServerStartError(
        f"tritonserver not ready after {timeout_s:.0f} s (raise --ready-timeout); last log lines:\n{server.log_tail()}"
    )
