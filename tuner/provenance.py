"""Where a run happened: versions, hardware and command line, recorded beside every result."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib import metadata
from typing import Any

from tuner.meters import nvml
from tuner.meters.estimate import cpu_model
from tuner.redact import mask_url, redact


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
        "command_line": command_line(),
        **gpu_environment(),
    }


URL_PARAMS = ("storage", "url", "docker_host")


def command_line() -> str:
    """The command as greentune parsed it, rebuilt from its options (URL passwords and tokens masked).

    Rebuilt from Click's parsed parameters rather than copied from sys.argv, so a secret given in any form
    (--storage=URL, an environment variable, a prefix of the flag) is recorded only masked. Outside a Click
    command (library use) it is sys.argv with every secret scrubbed.
    """
    try:
        import click
        from click.core import ParameterSource
    except ImportError:  # pragma: no cover - click is a dependency
        click = None  # type: ignore[assignment]
    ctx = click.get_current_context(silent=True) if click is not None else None
    if ctx is None:
        return redact(" ".join(["greentune", *map(shlex.quote, sys.argv[1:])]))
    words = ["greentune", *([ctx.info_name] if ctx.parent is not None and ctx.info_name else [])]
    for param in ctx.command.params:
        name = param.name or ""
        if name not in ctx.params or ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT):
            continue
        value = ctx.params[name]
        values = list(value) if isinstance(value, (list, tuple)) and getattr(param, "multiple", False) else [value]
        if isinstance(param, click.Argument):
            words.extend(str(v) for v in values)
            continue
        option = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            secondary = getattr(param, "secondary_opts", [])
            if value:
                words.append(option)
            elif secondary:
                words.append(max(secondary, key=len))
            continue
        for v in values:
            text = str(v)
            words.extend([option, (mask_url(text) or "") if name in URL_PARAMS else text])
    return redact(" ".join(shlex.quote(w) if i else w for i, w in enumerate(words)))


def gpu_environment() -> dict[str, Any]:
    """GPU models and driver from NVML, where there is one (nothing otherwise)."""
    if nvml.gpu_count() == 0:
        return {}
    try:
        module = nvml.nvml_module()
        names = [str(module.nvmlDeviceGetName(module.nvmlDeviceGetHandleByIndex(i)))
                 for i in range(module.nvmlDeviceGetCount())]
        return {"gpu_models": ", ".join(names), "gpu_driver": str(module.nvmlSystemGetDriverVersion())}
    except Exception as exc:  # provenance must not fail a run
        return {"gpu_models": f"unknown ({exc})"}
