"""config.pbtxt and every output are written atomically: a failure after bytes hit the disk keeps the old file."""

from __future__ import annotations

import errno
import os

import pytest

from tests.conftest import MODEL_REPOSITORY
from tuner import fileio
from tuner.model_config import apply_trial, load_model_config, read_model_config, write_model_config
from tuner.results import TrialConfig


@pytest.fixture
def old_config(tmp_path):
    base = load_model_config(MODEL_REPOSITORY, "mlp")
    path = tmp_path / "config.pbtxt"
    write_model_config(base, path)
    return base, path, path.read_bytes()


def _temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name != "config.pbtxt")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_after_a_partial_write_keeps_the_old_file_and_no_temp_file(old_config, monkeypatch, failing):
    base, path, original = old_config
    new = apply_trial(base, TrialConfig(instance_count=3, max_batch_size=8))
    written: list[int] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        size = os.fstat(fd).st_size
        if failing == "fsync" and size > 0 and not os.path.isdir(f"/proc/self/fd/{fd}"):
            written.append(size)  # the new config's bytes are in the temp file when the disk gives up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    def replace(src, dst):
        if failing == "replace":
            written.append(os.path.getsize(src))
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        write_model_config(new, path)
    assert written and written[0] > 0  # the failure came after a write, not before it
    assert path.read_bytes() == original
    assert read_model_config(path) == base
    assert _temp_files(path.parent) == []


def test_interrupt_between_write_and_rename_leaves_the_old_file(old_config, monkeypatch):
    base, path, original = old_config
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(path, b"half a config")
    assert path.read_bytes() == original and _temp_files(path.parent) == []


def test_success_replaces_the_file_and_leaves_no_temp_file(old_config):
    base, path, _ = old_config
    new = apply_trial(base, TrialConfig(instance_count=3))
    write_model_config(new, path)
    assert read_model_config(path) == new and _temp_files(path.parent) == []
