"""Where a run happened: versions, hardware and command line, recorded beside every result."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from importlib import metadata
from typing import Any

from tuner.meters.estimate import cpu_model


def package_version(name: str) -> str:
    """Installed version of a distribution, or 'not installed'."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(triton_version: str = "unknown", server_source: str = "unknown") -> dict[str, Any]:
    """Hardware and software versions for summaries and reports."""
    return {
        "greentune": package_version("greentune"),
        "triton_server": triton_version,
        "triton_binary": server_source,
        "python": platform.python_version(),
        "optuna": package_version("optuna"),
        "tritonclient": package_version("tritonclient"),
        "os": f"{platform.system()} {platform.release()}",
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command_line": " ".join(["greentune", *sys.argv[1:]]),
        **gpu_environment(),
    }


def gpu_environment() -> dict[str, Any]:
    """GPU models and driver from NVML, where there is one (nothing otherwise)."""
    from tuner.meters import nvml

    if nvml.gpu_count() == 0:
        return {}
    try:
        module = nvml.nvml_module()
        names = [str(module.nvmlDeviceGetName(module.nvmlDeviceGetHandleByIndex(i)))
                 for i in range(module.nvmlDeviceGetCount())]
        return {"gpu_models": ", ".join(names), "gpu_driver": str(module.nvmlSystemGetDriverVersion())}
    except Exception as exc:  # provenance must not fail a run
        return {"gpu_models": f"unknown ({exc})"}
