"""greentune as a user installs it: a wheel built from this repository, in a fresh virtual environment, run from a
directory outside the checkout (so nothing can be read from the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import MODEL_REPOSITORY, ROOT, triton_processes
from tests.integration.conftest import FAST_FLAGS
from tuner.model_config import read_model_config
from tuner.server import control

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(cmd: list[str], cwd: Path, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "160", **(env or {})})


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build wheel and sdist with `python -m build`, install the wheel into a fresh venv; its bin/ directory."""
    dist = tmp_path_factory.mktemp("dist")
    built = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=dist)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheels = list(dist.glob("greentune-*.whl"))
    sdists = list(dist.glob("greentune-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert {"tuner/spaces/default.yaml", "tuner/spaces/cpu.yaml", "tuner/spaces/gpu.yaml"} <= set(names)
    assert not any(n.startswith(("search_spaces/", "tests/", "model_repository/")) for n in names)
    venv = tmp_path_factory.mktemp("venv") / "env"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=dist)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheels[0])], cwd=dist, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    return venv / "bin"


def test_wheel_install_runs_version_doctor_and_a_search_from_elsewhere(installed, tmp_path, server):
    work = tmp_path / "elsewhere"
    repo = work / "models"
    shutil.copytree(MODEL_REPOSITORY / "mlp", repo / "mlp")
    greentune = str(installed / "greentune")
    # The installed package, not this checkout, is what runs (PYTHONPATH cleared, cwd outside the checkout).
    env = {"PYTHONPATH": ""}
    where = _run([str(installed / "python"), "-c", "import tuner, sys; print(tuner.__file__)"], cwd=work, env=env)
    assert where.returncode == 0 and str(installed.parent) in where.stdout and str(ROOT) not in where.stdout

    version = _run([greentune, "--version"], cwd=work, env=env)
    assert version.returncode == 0 and "0." in version.stdout, version.stderr

    doctor = _run([greentune, "doctor"], cwd=work, env=env)
    assert doctor.returncode == 0, doctor.stdout[-2000:] + doctor.stderr[-2000:]

    out = work / "out"
    search = _run([greentune, "search", "-r", "models", "-m", "mlp", "--space", "default", "--trials", "2",
                   "-c", "2", *FAST_FLAGS, "-o", "out"], cwd=work, env=env)
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]
    exported = out / "mlp" / "config.pbtxt"
    config = read_model_config(exported)
    control.load_config(server, "mlp", config)  # a real Triton server accepts the exported config
    assert (out / "summary.json").exists() and (out / "report.html").exists()
    assert triton_processes() == []
