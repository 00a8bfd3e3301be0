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


def test_doctor_masks_credentials_in_docker_host(monkeypatch):
    from click.testing import CliRunner

    from tuner.cli import cli

    monkeypatch.setenv("DOCKER_HOST", "tcp://admin:D0ckerSecret@127.0.0.1:1?token=T0kenSecret")
    checks = {c.name: c for c in run_checks(fetch=False)}
    assert "D0ckerSecret" not in checks["docker API"].detail and "admin:***@" in checks["docker API"].detail
    assert "T0kenSecret" not in checks["docker API"].detail
    result = CliRunner().invoke(cli, ["doctor", "--cleanup", "--docker-host", "tcp://u:Pw0rdSecret@127.0.0.1:1"])
    assert result.exit_code == 2 and "Pw0rdSecret" not in result.output and "D0ckerSecret" not in result.output
    assert "--docker-host: no Docker Engine API at tcp://u:***@127.0.0.1:1" in result.output
