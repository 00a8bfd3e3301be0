"""Use an already running Triton server given by URL; greentune neither starts nor stops it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from tuner.errors import BadInput, ServerStartError
from tuner.redact import mask_url
from tuner.server.base import Server
from tuner.server.local import wait_ready


class RemoteLauncher:
    """A server someone else runs (started with --model-control-mode=explicit); meters need local access."""

    name = "remote"

    def __init__(self, url: str, grpc_port: int | None = None, ready_timeout_s: float = 10.0,
                 control_headers: dict[str, str] | None = None) -> None:
        hint = "expected the server's HTTP address, e.g. http://127.0.0.1:8000"
        try:
            parsed = urlparse(url if "://" in url else f"http://{url}")
            port = parsed.port or 8000
        except ValueError:  # a port that is not a number or is out of range
            raise BadInput(f"--url {mask_url(url)}: bad port; {hint} (ports 1-65533: gRPC and metrics follow it)") from None
        if not parsed.hostname or parsed.scheme not in ("http", "https"):
            raise BadInput(f"--url {mask_url(url)}: {hint}")
        if not 1 <= port <= 65533:
            raise BadInput(f"--url {mask_url(url)}: bad port {port}; {hint} (ports 1-65533: gRPC and metrics follow it)")
        self.http_url = f"{parsed.scheme}://{parsed.hostname}:{port}"
        self.grpc_url = f"{parsed.hostname}:{grpc_port or port + 1}"
        self.metrics_url = f"http://{parsed.hostname}:{port + 2}/metrics"
        self.ready_timeout_s = ready_timeout_s
        # For a server whose model-repository API is restricted (--grpc-restricted-protocol): the header it expects.
        self.control_headers = dict(control_headers or {})

    @contextlib.contextmanager
    def start(self, model_repository: Path, output_dir: Path) -> Iterator[Server]:
        """Check the server is ready and yield it; nothing is stopped on exit."""
        server = Server(grpc_url=self.grpc_url, http_url=self.http_url, metrics_url=self.metrics_url, kind="remote",
                        control_headers=self.control_headers)
        try:
            wait_ready(server, self.ready_timeout_s)
        except ServerStartError:
            raise ServerStartError(f"--url {self.http_url}: no ready Triton server answers there") from None
        yield server
