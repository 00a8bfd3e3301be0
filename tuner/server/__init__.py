"""Launchers behind one contract: `with launcher.start(repo, out) as server:` is the only way to get a server."""

from __future__ import annotations

from tuner.server.base import Server, ServerLauncher
from tuner.server.docker import DockerLauncher
from tuner.server.local import LocalLauncher
from tuner.server.remote import RemoteLauncher

__all__ = ["DockerLauncher", "LocalLauncher", "RemoteLauncher", "Server", "ServerLauncher"]
