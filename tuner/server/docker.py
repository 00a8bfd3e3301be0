"""Launch Triton in a container through the Docker Engine API (Docker or Podman's compatible socket)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuner.errors import BadInput, ServerStartError
from tuner.events import ImagePulling, Progress, emit
from tuner.redact import mask_url, redact
from tuner.server.base import Server
from tuner.server.identity import Owner
from tuner.server.local import new_control_key, restricted_args, triton_args, wait_ready
from tuner.server.probes import ContainerProbe
from tuner.server.process import free_ports, port_in_use, signals_deferred

# NVIDIA's Triton image; the one place the default release is named.
DEFAULT_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
LABEL_RUN = "greentune.run"
LABEL_OUTPUT = "greentune.output"
LABEL_OWNER = "greentune.owner_pid"
# The owner's identity (tuner/server/identity.py: boot id, pid namespace, pid, start time, uid): a container is left
# over only when its owner is the caller's uid and proven dead; without greentune.owner.uid it is never touched.
LABEL_OWNER_PREFIX = "greentune.owner."
CONTAINER_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}



def docker_client(docker_host: str | None = None) -> Any:
    """A Docker SDK client for --docker-host, else DOCKER_HOST, else the default socket; BadInput when unreachable."""
    import docker.client
    import docker.errors

    host = docker_host or os.environ.get("DOCKER_HOST")
    try:
        client = docker.client.DockerClient(base_url=host, timeout=60) if host else docker.client.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        where = mask_url(host) or "the default socket (unix:///var/run/docker.sock)"
        raise BadInput(
            f"--docker-host: no Docker Engine API at {where} ({redact(_first_line(exc))}); start Docker, or start "
            "`podman system service --time=0 unix:///PATH.sock` and pass --docker-host unix:///PATH.sock"
        ) from None
    return client


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class DockerLauncher:
    """Runs Triton in a container: model repository read-only, explicit model control, labelled, always removed."""

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        docker_host: str | None = None,
        gpus: list[int] | None = None,
        all_gpus: bool = False,
        shm_size: str = "1g",
        network: str = "host",
        ready_timeout_s: float = 180.0,
        pull_progress: Progress | None = None,
        user: str | None = None,
    ) -> None:
        if network not in ("host", "bridge"):
            raise BadInput(f"--network {network}: expected host or bridge (published ports)")
        self.image = image
        self.docker_host = docker_host
        self.gpus = gpus
        self.all_gpus = all_gpus
        self.shm_size = shm_size
        self.network = network
        self.ready_timeout_s = ready_timeout_s
        self.pull_progress = pull_progress
        self.user = user

    def ensure_image(self, client: Any) -> None:
        """Pull the image when it is not present, reporting progress; BadInput naming the image when it fails."""
        import docker.errors

        try:
            client.images.get(self.image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise ServerStartError(f"cannot inspect image {self.image}: {_first_line(exc)}") from None
        repository, _, tag = self.image.rpartition(":") if ":" in self.image.split("/")[-1] else (self.image, "", "latest")
        registry = self.image.split("/")[0] if "." in self.image.split("/")[0] else "docker.io"
        try:
            for event in client.api.pull(repository, tag=tag, stream=True, decode=True):
                if "error" in event:
                    raise docker.errors.APIError(event["error"])
                detail = event.get("progressDetail") or {}
                emit(self.pull_progress, ImagePulling(self.image, event.get("status") or "", event.get("id") or "",
                                                      int(detail.get("current") or 0), int(detail.get("total") or 0)))
        except docker.errors.DockerException as exc:
            raise BadInput(
                f"--image {self.image}: not present locally and the pull failed ({_first_line(exc)}); "
                f"check the name, or log in first: docker login {registry}"
            ) from None

    @contextlib.contextmanager
    def start(self, model_repository: Path, output_dir: Path) -> Iterator[Server]:
        """Run the container, wait until Triton is ready, yield it; save its log and remove it on any exit."""
        import docker.errors
        import docker.types

        client = docker_client(self.docker_host)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_leftovers(client, output_dir)
        self.ensure_image(client)
        run_id = uuid.uuid4().hex[:12]
        repo = Path(model_repository).resolve()
        kwargs: dict[str, Any] = {
            "detach": True,
            "name": f"greentune-{run_id}",
            "labels": {LABEL_RUN: run_id, LABEL_OUTPUT: str(output_dir.resolve()), **owner_labels(Owner.current())},
            "volumes": {str(repo): {"bind": "/models", "mode": "ro"}},
            "shm_size": self.shm_size,
            # Least privilege: no capabilities, no privilege gain through setuid files, the caller's uid:gid.
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            **self.user_options(),
        }
        ports = dict(zip(CONTAINER_PORTS, free_ports(3), strict=True))
        control_headers = new_control_key()
        if self.network == "host":
            command = ["tritonserver", *triton_args("/models", ports["http"], ports["grpc"], ports["metrics"],
                                                    control_headers)]
            kwargs["network_mode"] = "host"
        else:
            # Inside its own network namespace the server listens on the image's usual ports, published here.
            command = ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--log-verbose=0",
                       *restricted_args(control_headers)]
            kwargs["ports"] = {f"{CONTAINER_PORTS[k]}/tcp": ("127.0.0.1", ports[k]) for k in CONTAINER_PORTS}
        for name, port in ports.items():
            if port_in_use(port):
                raise ServerStartError(f"port {port} for Triton's {name} endpoint is already in use; retry")
        if self.all_gpus or self.gpus:
            request = (docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]]) if self.all_gpus else
                       docker.types.DeviceRequest(device_ids=[str(g) for g in self.gpus or []], capabilities=[["gpu"]]))
            kwargs["device_requests"] = [request]
        log_path = output_dir / "tritonserver.log"
        with contextlib.ExitStack() as cleanup:
            started: list[Any] = []
            # Registered before the container exists: a signal held during containers.run is re-raised after it
            # returns, and this callback then removes the container instead of orphaning it.
            cleanup.callback(_remove_run, client, run_id, started, log_path)
            try:
                with signals_deferred():
                    started.append(client.containers.run(self.image, command, **kwargs))
            except docker.errors.APIError as exc:
                raise ServerStartError(f"cannot start a container from {self.image}: {_first_line(exc)}") from None
            server = dataclasses.replace(self._server(started[0], ports, log_path), control_headers=control_headers)
            _wait_container_ready(server, started[0], self.ready_timeout_s)
            yield server

    def user_options(self) -> dict[str, Any]:
        """Run the server as the caller's uid:gid (it needs no more: the repository is read-only, the log goes to
        stdout), with HOME in /tmp for tools that want one; --container-user overrides (e.g. the image's own user)."""
        user = self.user if self.user is not None else f"{os.getuid()}:{os.getgid()}"
        return {"user": user, "environment": {"HOME": "/tmp"}} if user else {}

    def _server(self, container: Any, ports: dict[str, int], log_path: Path) -> Server:
        def alive() -> bool:
            import docker.errors

            try:
                container.reload()
            except docker.errors.NotFound:
                return False
            except docker.errors.DockerException:
                return True  # the API hiccuped; the trial will show it if the server is really gone
            return bool(container.status == "running")

        def logs(lines: int) -> str:
            try:
                return str(container.logs(tail=lines).decode(errors="replace")).strip()
            except Exception:
                return ""

        return Server(
            grpc_url=f"127.0.0.1:{ports['grpc']}",
            http_url=f"http://127.0.0.1:{ports['http']}",
            metrics_url=f"http://127.0.0.1:{ports['metrics']}/metrics",
            pid=None,
            log_path=log_path,
            kind="docker",
            details={"image": self.image, "container": container.name, "source": f"docker image {self.image}"},
            probe=ContainerProbe(container),
            alive=alive,
            log_reader=logs,
        )


def _wait_container_ready(server: Server, container: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.is_alive():
            raise ServerStartError(f"the Triton container exited during start; its last log lines:\n{server.log_tail(10)}")
        try:
            wait_ready(server, 1.0)
            return
        except ServerStartError:
            continue
    raise ServerStartError(f"Triton in the container was not ready after {timeout_s:.0f} s; last log lines:\n"
                           f"{server.log_tail(10)}")


def _remove_run(client: Any, run_id: str, started: list[Any], log_path: Path) -> None:
    """Save the container's log and remove it (and anything else with this run's label), signals held."""
    import docker.errors

    with signals_deferred():
        for container in started:
            _save_log(container, log_path)
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
        _remove_by_label(client, run_id)
        client.close()


def _save_log(container: Any, path: Path) -> None:
    try:
        path.write_bytes(container.logs())
    except Exception:
        pass


def _remove_by_label(client: Any, run_id: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.DockerException):
        for container in client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}):
            container.remove(force=True)


def owner_labels(owner: Owner) -> dict[str, str]:
    """Container labels naming the owning greentune process (pid kept under its old label too)."""
    return {LABEL_OWNER: str(owner.pid), **{LABEL_OWNER_PREFIX + k: v for k, v in owner.to_dict().items()}}


def label_owner(labels: dict[str, str]) -> Owner | None:
    """The owner recorded in a container's labels, or None (then it cannot be proven dead)."""
    fields = {k[len(LABEL_OWNER_PREFIX):]: v for k, v in labels.items() if k.startswith(LABEL_OWNER_PREFIX)}
    return Owner.from_dict(fields)


def remove_leftovers(client: Any, output_dir: Path | None = None) -> list[str]:
    """Remove containers of killed greentune runs (for output_dir, or all when None).

    Only containers that are provably ours and dead: the owner recorded as the caller's uid (any uid when the
    caller is root), in this boot and this pid namespace, and that pid now free or belonging to a process started
    at another time. Containers of another user, another host (remote daemon), another container's greentune, an
    older greentune without identity labels (uid included), a live owner, or an owner whose liveness cannot be
    read (another user's process under /proc's hidepid) are left alone.
    """
    import docker.errors

    removed: list[str] = []
    try:
        containers = client.containers.list(all=True, filters={"label": LABEL_RUN})
    except docker.errors.DockerException:
        return removed
    for container in containers:
        labels = container.labels or {}
        if output_dir is not None and labels.get(LABEL_OUTPUT) != str(Path(output_dir).resolve()):
            continue
        owner = label_owner(labels)
        if owner is None or not owner.is_callers() or not owner.proven_dead():
            continue
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
            removed.append(container.name)
    return removed


def remove_leftover_containers(docker_host: str | None = None) -> list[str]:
    """`greentune doctor --cleanup`: remove every killed run's containers on the Docker Engine API at docker_host."""
    client = docker_client(docker_host)
    try:
        return remove_leftovers(client)
    finally:
        client.close()
