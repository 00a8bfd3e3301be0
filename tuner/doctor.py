"""What this machine offers greentune: Triton binaries, launchers, meters, GPUs, Docker API; each with its fix."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuner.engines.pa_install import TRITONCLIENT_VERSION, find_perf_analyzer
from tuner.meters.rapl import RAPL_ACCESS_ADVICE
from tuner.redact import mask_url, redact
from tuner.server.embedded import PYTRITON_VERSION, cache_dir, embedded_triton


@dataclass(frozen=True)
class Check:
    """One finding: what, whether it is available, the detail, and how to fix it when not."""

    area: str
    name: str
    available: bool
    detail: str
    fix: str = ""


def run_checks(fetch: bool = False, powercap_root: Path = Path("/sys/class/powercap"),
               proc_mounts: Path = Path("/proc/mounts")) -> list[Check]:
    """Look at the machine (lazily, nothing cached); with fetch=True download the embedded server if missing."""
    checks: list[Check] = []
    on_path = shutil.which("tritonserver")
    checks.append(Check("triton", "tritonserver on PATH", bool(on_path), on_path or "not found",
                        "" if on_path else "optional: greentune falls back to the embedded server"))
    try:
        install = embedded_triton(allow_fetch=fetch)
        checks.append(Check("triton", f"embedded (nvidia-pytriton {PYTRITON_VERSION})", True, str(install.binary)))
    except Exception as exc:  # reported, not raised: doctor explains
        checks.append(Check("triton", f"embedded (nvidia-pytriton {PYTRITON_VERSION})", False, str(exc).splitlines()[0],
                            f"greentune doctor --fetch (downloads into {cache_dir()})"))
    embedded_ok = checks[-1].available
    checks.append(_perf_analyzer_check(fetch and embedded_ok))
    local_ok = bool(on_path) or embedded_ok
    checks.append(Check("launcher", "local", local_ok, "starts tritonserver here" if local_ok else "no binary",
                        "" if local_ok else "see the triton lines above"))
    checks.append(Check("launcher", "remote", True, "uses a running server given by --url"))
    checks.append(_control_key_check(proc_mounts))
    checks.append(_docker_check())
    checks.extend(_nvml_checks())
    checks.append(_rapl_check(powercap_root))
    checks.append(Check("meter", "estimate", True,
                        "CPU time of the server processes x (TDP / cores) + idle share; figures labelled 'estimated'"))
    checks.append(Check("meter", "memory", True, "peak RSS of the server process tree"))
    return checks


def _perf_analyzer_check(fetch: bool) -> Check:
    name = "perf_analyzer (load generator)"
    try:
        found = find_perf_analyzer(allow_fetch=fetch)
    except Exception as exc:  # reported, not raised: doctor explains
        return Check("load", name, False, str(exc).splitlines()[0],
                     f"greentune doctor --fetch (from tritonclient=={TRITONCLIENT_VERSION}); else the built-in engine "
                     f"is used")
    return Check("load", name, True, f"{found.binary} ({found.source})")


# /proc mount options under which other users cannot read a process's /proc/PID/cmdline (proc(5): hidepid).
HIDING_HIDEPID = ("1", "2", "4", "noaccess", "invisible", "ptraceable")


def proc_hidepid(proc_mounts: Path = Path("/proc/mounts")) -> str:
    """The hidepid option of the /proc mount ("0" when unset, "unknown" when /proc/mounts cannot be read)."""
    try:
        lines = proc_mounts.read_text().splitlines()
    except OSError:
        return "unknown"
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == "/proc" and fields[2] == "proc":
            options = dict(option.partition("=")[::2] for option in fields[3].split(","))
            return options.get("hidepid", "0")
    return "unknown"


def _control_key_check(proc_mounts: Path) -> Check:
    # Triton 2.51 reads the restricted-API key only from its command line (no file, no environment variable).
    guards = ("the per-run key on tritonserver's command line keeps other users' clients on the loopback ports from "
              "loading models and using shared memory, logging and trace")
    hidepid = proc_hidepid(proc_mounts)
    if hidepid in HIDING_HIDEPID:
        return Check("security", "server control key", True,
                     f"{guards}; /proc has hidepid={hidepid}, so other users cannot read it from /proc/PID/cmdline "
                     "(root, and the hidepid gid= group, still can)")
    return Check("security", "server control key", False,
                 f"{guards}; not from a local user who reads /proc/PID/cmdline of greentune's tritonserver (`ps` "
                 f"shows it; /proc hidepid={hidepid})",
                 "on a shared host mount /proc with hidepid=2 (`mount -o remount,hidepid=2 /proc`) so only root and "
                 "greentune's user can read the key")


def _docker_check() -> Check:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    shown = mask_url(host)
    try:
        import docker.client

        client = docker.client.DockerClient(base_url=host, timeout=3)
        version = client.version().get("Version", "?")
        client.close()
        return Check("launcher", "docker API", True, f"{shown} (engine {version})")
    except Exception as exc:
        return Check("launcher", "docker API", False, f"{shown}: {redact(str(exc).splitlines()[0][:120])}",
                     "start Docker, or `podman system service --time=0 unix:///PATH.sock` and set DOCKER_HOST")


def _nvml_checks() -> list[Check]:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return [Check("meter", "nvml", False, f"NVML not available: {str(exc)[:100]}",
                      "needs an NVIDIA GPU and driver; energy on this machine is estimated or read from RAPL")]
    try:
        checks = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            checks.append(Check("gpu", f"GPU {index}", True, str(name)))
        checks.append(Check("meter", "nvml", bool(checks), f"{len(checks)} GPU(s), driver "
                                                            f"{pynvml.nvmlSystemGetDriverVersion()}"))
        return checks
    finally:
        pynvml.nvmlShutdown()


def _rapl_check(root: Path) -> Check:
    domains = sorted(root.glob("intel-rapl:*/energy_uj")) if root.exists() else []
    if not domains:
        return Check("meter", "rapl", False, f"no {root}/intel-rapl:*/energy_uj",
                     "RAPL needs an Intel or AMD CPU with powercap exposed (not in most VMs)")
    unreadable = [p for p in domains if not os.access(p, os.R_OK)]
    if unreadable:
        return Check("meter", "rapl", False, f"{unreadable[0]} is not readable",
                     RAPL_ACCESS_ADVICE)
    return Check("meter", "rapl", True, f"{len(domains)} domain(s) under {root}")
