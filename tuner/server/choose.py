"""Flags to a launcher: which server runs Triton (--launcher and its flags), checked before any server starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import EllipsisType
from typing import Any

from tuner.errors import BadInput
from tuner.events import Progress
from tuner.server.base import ServerLauncher
from tuner.server.docker import DEFAULT_IMAGE, DockerLauncher
from tuner.server.local import LocalLauncher
from tuner.server.remote import RemoteLauncher

LAUNCHER_KINDS = ("local", "docker", "remote")


@dataclass(frozen=True)
class LauncherChoice:
    """The launcher the flags ask for and its settings; a flag that does not apply to it is an error, not ignored."""

    kind: str = "local"
    tritonserver: Path | None = None
    url: str | None = None
    image: str | None = None
    docker_host: str | None = None
    shm_size: str = "1g"
    network: str = "host"
    ready_timeout_s: float = 120.0
    gpus: tuple[int, ...] | None = None  # None: every GPU (docker: none unless all_gpus)
    all_gpus: bool = False  # --gpus all (docker requests every GPU)
    ports: tuple[int, int, int] | None = None  # HTTP, gRPC, metrics of a local server

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> LauncherChoice:
        """The choice from the server flags (--launcher, --tritonserver, --url, --image, --docker-host, --shm-size,
        --network, --ready-timeout, --ports) and --gpus."""
        gpus = parse_gpus(flags["gpus"])
        return cls(kind=flags["launcher"], tritonserver=flags["tritonserver"], url=flags["url"], image=flags["image"],
                   docker_host=flags["docker_host"], shm_size=flags["shm_size"], network=flags["network"],
                   ready_timeout_s=flags["ready_timeout"], gpus=None if gpus is None else tuple(gpus),
                   all_gpus=flags["gpus"] == "all", ports=parse_ports(flags.get("ports")))

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHER_KINDS:
            raise BadInput(f"--launcher {self.kind}: expected one of {', '.join(LAUNCHER_KINDS)}")
        if self.kind != "docker":
            for flag, value in (("--image", self.image), ("--docker-host", self.docker_host)):
                if value is not None:
                    raise BadInput(f"{flag} is only used with --launcher docker")
        if self.kind == "docker" and (self.tritonserver is not None or self.url):
            raise BadInput("--tritonserver and --url are not used with --launcher docker (give --image)")
        if self.kind == "remote":
            if not self.url:
                raise BadInput("--launcher remote needs --url http://HOST:PORT of a running server")
            if self.tritonserver is not None:
                raise BadInput("--tritonserver is only used with --launcher local")
        if self.kind == "local" and self.url:
            raise BadInput("--url is only used with --launcher remote")
        if self.ports is not None and self.kind != "local":
            raise BadInput("--ports is only used with --launcher local")
        self.launcher()  # each launcher checks its own values (the URL, the network) when built

    def launcher(self, gpus: list[int] | None | EllipsisType = ...,
                 pull_progress: Progress | None = None) -> ServerLauncher:
        """A launcher as chosen, pinned to `gpus` (default: those of --gpus; None: every GPU); docker reports its
        image pull through pull_progress."""
        if isinstance(gpus, EllipsisType):
            pinned, all_gpus = (None if self.gpus is None else list(self.gpus)), self.all_gpus
        else:
            pinned, all_gpus = gpus, False
        if self.kind == "docker":
            return DockerLauncher(image=self.image or DEFAULT_IMAGE, docker_host=self.docker_host, gpus=pinned,
                                  all_gpus=all_gpus, shm_size=self.shm_size, network=self.network,
                                  ready_timeout_s=self.ready_timeout_s, pull_progress=pull_progress)
        if self.kind == "remote":
            return RemoteLauncher(self.url or "", ready_timeout_s=self.ready_timeout_s)
        return LocalLauncher(self.tritonserver, ready_timeout_s=self.ready_timeout_s, gpus=pinned, ports=self.ports)


def parse_ports(text: str | None) -> tuple[int, int, int] | None:
    """--ports 8000,8001,8002 -> (8000, 8001, 8002)."""
    if not text:
        return None
    try:
        ports = tuple(int(p) for p in text.split(","))
        if len(ports) != 3 or len(set(ports)) != 3 or not all(1024 <= p <= 65535 for p in ports):
            raise ValueError
    except ValueError:
        raise BadInput(f"--ports {text}: expected three distinct ports from 1024 to 65535: HTTP,GRPC,METRICS") from None
    return ports[0], ports[1], ports[2]


def parse_gpus(text: str | None) -> list[int] | None:
    """--gpus 0,1 -> [0, 1]; all (or none given) -> None, meaning every GPU."""
    if text is None or text == "all":
        return None
    try:
        gpus = [int(part) for part in text.split(",")]
        if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
            raise ValueError
    except ValueError:
        raise BadInput(f"--gpus {text}: expected distinct GPU indices, e.g. 0,1") from None
    return gpus
