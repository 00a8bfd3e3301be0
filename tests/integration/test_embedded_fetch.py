"""First use of the embedded server: pinned sha256, pip --only-binary, and two first runs at once both working.

No network and no server: the wheel already in greentune's cache is served to pip as a local --find-links."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.errors import ServerStartError
from tuner.server import embedded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    found = sorted((embedded.cache_dir() / "wheels").glob(embedded.WHEEL_GLOB))
    found = [w for w in found if w.name in embedded.PINNED_SHA256]
    if not found:
        if os.environ.get("GREENTUNE_REQUIRE_DOCKER"):  # CI: scripts/test.sh fetched it before the tests
            raise RuntimeError("no nvidia-pytriton wheel in the cache; run greentune doctor --fetch")
        pytest.skip("no cached nvidia-pytriton wheel (greentune doctor --fetch)")
    folder = tmp_path_factory.mktemp("links")
    shutil.copy2(found[-1], folder / found[-1].name)
    return folder


SCRIPT = ("from tuner.server.embedded import embedded_triton; import os; t = embedded_triton(); "
          "assert os.access(t.binary, os.X_OK) and t.backend_directory.is_dir(); print(t.binary)")


def test_two_first_fetches_at_once_both_work(tmp_path, wheel_dir):
    cache = tmp_path / "cache"
    env = {**os.environ, "GREENTUNE_CACHE": str(cache), "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheel_dir),
           "PIP_CONSTRAINT": "", "PIP_EXTRA_INDEX_URL": ""}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert stdout.strip().endswith("bin/tritonserver")
    assert outputs[0][0] == outputs[1][0]
    # downloaded once through pip (--only-binary), unpacked once; no temp dirs left behind
    assert len(list((cache / "wheels").glob(embedded.WHEEL_GLOB))) == 1
    leftovers = [p.name for p in cache.iterdir() if p.name.startswith(".pytriton") and not p.name.endswith(".lock")]
    assert leftovers == []
    assert (cache / f"pytriton-{embedded.PYTRITON_VERSION}" / ".complete").exists()


def test_a_wheel_that_does_not_match_the_pinned_sha256_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "wheels" / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
    fake.parent.mkdir()
    fake.write_bytes(b"not the wheel")
    monkeypatch.setenv("GREENTUNE_CACHE", str(tmp_path))
    with pytest.raises(ServerStartError, match="does not match the pinned"):
        embedded.embedded_triton(allow_fetch=False)
    assert not (tmp_path / f"pytriton-{embedded.PYTRITON_VERSION}").exists()
    other = tmp_path / "wheels" / "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_riscv64.whl"
    other.write_bytes(b"x")
    with pytest.raises(ServerStartError, match="no pinned sha256"):
        embedded.check_sha256(other)
