from __future__ import annotations

from tests.unit.test_meters import _powercap
from tuner.doctor import run_checks


def test_doctor_explains_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    checks = {c.name: c for c in run_checks(fetch=False, powercap_root=tmp_path / "none")}
    assert checks["estimate"].available and checks["remote"].available
    assert not checks["docker API"].available and "podman system service" in checks["docker API"].fix
    assert not checks["rapl"].available and "RAPL" in checks["rapl"].fix
    if not checks["nvml"].available:
        assert "NVIDIA GPU" in checks["nvml"].fix
    with_rapl = {c.name: c for c in run_checks(fetch=False, powercap_root=_powercap(tmp_path / "pc", 1, 1))}
    assert with_rapl["rapl"].available
