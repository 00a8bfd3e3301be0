"""The per-run key guards model control, shared memory, logging and trace; doctor says what it does and does not protect."""

from __future__ import annotations

import pytest

from tuner.doctor import proc_hidepid, run_checks
from tuner.server.local import CONTROL_HEADER, restricted_args, triton_args

# Triton 2.51's names (tritonserver --help: "Allowed APIs: health, metadata, inference, shared-memory, model-config,
# model-repository, statistics, trace, logging").
TRITON_251_APIS = {"health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                   "statistics", "trace", "logging"}


def test_the_key_restricts_model_repository_shared_memory_logging_and_trace_on_both_endpoints():
    args = restricted_args({CONTROL_HEADER: "KEY"})
    assert args == triton_args("/models", 1, 2, 3, {CONTROL_HEADER: "KEY"})[:2]
    flags = dict(arg.split("=", 1) for arg in args)
    assert set(flags) == {"--grpc-restricted-protocol", "--http-restricted-api"}
    for value in flags.values():
        apis, _, header = value.partition(":")
        assert set(apis.split(",")) == {"model-repository", "shared-memory", "logging", "trace"}
        assert set(apis.split(",")) <= TRITON_251_APIS
        assert header == f"{CONTROL_HEADER}=KEY"
    # inference, health, metadata, model config and statistics stay open for load generators and perf_analyzer
    assert not any(api in value for value in flags.values() for api in ("inference", "health", "statistics"))


def mounts(tmp_path, options: str):
    path = tmp_path / "mounts"
    path.write_text(f"sysfs /sys sysfs rw 0 0\nproc /proc proc {options} 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n")
    return path


@pytest.mark.parametrize(("options", "hidepid"), [("rw,relatime", "0"), ("rw,relatime,hidepid=2", "2"),
                                                  ("rw,nosuid,hidepid=invisible,gid=27", "invisible")])
def test_proc_hidepid_reads_the_proc_mount(tmp_path, options, hidepid):
    assert proc_hidepid(mounts(tmp_path, options)) == hidepid
    assert proc_hidepid(tmp_path / "absent") == "unknown"


def test_doctor_says_what_the_control_key_protects_against_and_what_not(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")

    def row(options: str):
        checks = run_checks(fetch=False, powercap_root=tmp_path / "none", proc_mounts=mounts(tmp_path, options))
        return {c.name: c for c in checks}["server control key"]

    open_proc = row("rw,relatime")
    assert open_proc.area == "security" and not open_proc.available
    assert "other users' clients" in open_proc.detail and "shared memory, logging and trace" in open_proc.detail
    assert "not from a local user who reads /proc/PID/cmdline" in open_proc.detail and "hidepid=0" in open_proc.detail
    assert "hidepid=2" in open_proc.fix
    hidden = row("rw,relatime,hidepid=2")
    assert hidden.available and "other users cannot read it from /proc/PID/cmdline" in hidden.detail
    assert row("rw,hidepid=ptraceable").available
