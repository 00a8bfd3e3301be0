"""Find a Triton server binary: PyTriton's embedded build, fetched with `pip download --no-deps` into a cache."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import BadInput, GreentuneError, ServerStartError
from tuner.fileio import atomic_write

PYTRITON_VERSION = "0.7.0"
WHEEL_GLOB = f"nvidia_pytriton-{PYTRITON_VERSION}-*.whl"
# sha256 of each nvidia-pytriton wheel greentune unpacks and runs (from PyPI); any other file is refused.
PINNED_SHA256 = {
    "nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl":
        "21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df",
}


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to run: backend directory and environment additions."""

    binary: Path
    backend_directory: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    source: str = "path"


def cache_dir() -> Path:
    """greentune's cache: $GREENTUNE_CACHE, else $XDG_CACHE_HOME/greentune, else ~/.cache/greentune."""
    if os.environ.get("GREENTUNE_CACHE"):
        return Path(os.environ["GREENTUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "greentune"


def find_triton(explicit: Path | None = None, allow_fetch: bool = True) -> TritonInstall:
    """--tritonserver PATH, else tritonserver on PATH, else the embedded server (fetched once)."""
    found = given_or_on_path(explicit, "--tritonserver", "tritonserver")
    if found is not None:
        return TritonInstall(binary=found[0], source=found[1])
    return embedded_triton(allow_fetch=allow_fetch)


def given_or_on_path(explicit: Path | None, flag: str, name: str) -> tuple[Path, str] | None:
    """The binary a flag names (BadInput if it is not executable), else `name` on PATH, with where it came from;
    None when neither."""
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BadInput(f"{flag} {path}: not an executable file")
        return path, flag
    on_path = shutil.which(name)
    return (Path(on_path), "PATH") if on_path else None


def embedded_triton(allow_fetch: bool = True) -> TritonInstall:
    """The tritonserver from the nvidia-pytriton wheel, unpacked in the cache, with a writable backends dir."""
    root = cache_dir() / f"pytriton-{PYTRITON_VERSION}"
    marker = root / ".complete"
    if not marker.exists():
        # Two first runs at once: one downloads and unpacks under the lock, the other waits and finds it done.
        with cache_lock(f"pytriton-{PYTRITON_VERSION}"):
            if not marker.exists():
                wheel = _find_wheel(allow_fetch)
                check_sha256(wheel)
                _unpack(wheel, root)
                atomic_write(marker, str(wheel))
    server_dir = root / "pytriton" / "tritonserver"
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server_dir / "python_backend_stubs" / py / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerStartError(
            f"embedded Triton has no Python backend stub for Python {py}; use Python 3.8-3.13 or --tritonserver PATH"
        )
    backends = root / f"backends-py{py}"
    if not (backends / "python" / "triton_python_backend_stub").exists():
        with cache_lock(f"pytriton-{PYTRITON_VERSION}-backends-py{py}"):
            if not (backends / "python" / "triton_python_backend_stub").exists():
                tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".backends-py{py}."))
                try:
                    shutil.copytree(server_dir / "backends", tmp / "backends")
                    shutil.copy2(stub, tmp / "backends" / "python" / "triton_python_backend_stub")
                    shutil.rmtree(backends, ignore_errors=True)  # a half-made tree of an older version
                    (tmp / "backends").rename(backends)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    libs = [str(root / "nvidia_pytriton.libs")]
    pylib = sysconfig.get_config_var("LIBDIR")
    if pylib:
        libs.append(pylib)
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(libs + [os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep),
        # The stub's embedded Python finds this environment's numpy when our bin/ comes first on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    return TritonInstall(
        binary=server_dir / "bin" / "tritonserver",
        backend_directory=backends,
        env=env,
        source=f"embedded (nvidia-pytriton {PYTRITON_VERSION})",
    )


def _find_wheel(allow_fetch: bool) -> Path:
    if not allow_fetch and not sorted((cache_dir() / "wheels").glob(WHEEL_GLOB)):
        raise ServerStartError(
            f"no tritonserver found: give --tritonserver PATH, put tritonserver on PATH, "
            f"or run `greentune doctor --fetch` to download nvidia-pytriton {PYTRITON_VERSION}"
        )
    return download_wheel(f"nvidia-pytriton=={PYTRITON_VERSION}", WHEEL_GLOB, ServerStartError,
                          "for the embedded Triton server; give --tritonserver PATH instead")


def download_wheel(requirement: str, glob: str, error: type[GreentuneError], purpose: str) -> Path:
    """The cached wheel matching `glob`, else `pip download --no-deps --only-binary=:all:` it into the cache
    (callers hold cache_lock and check the sha256); `error` names what failed and `purpose` what to do instead."""
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(glob)) if wheels.exists() else []
    if found:
        return found[-1]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(wheels),
           requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(glob))
    if proc.returncode != 0 or not found:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise error(f"could not download {requirement} {purpose}: {last[0]}")
    return found[-1]


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock (fcntl, released when the process dies) on one item of the cache."""
    import fcntl

    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_sha256(wheel: Path, pinned: dict[str, str] | None = None, error: type[GreentuneError] = ServerStartError,
                 instead: str = "give --tritonserver PATH or put tritonserver on PATH") -> str:
    """The wheel's sha256, when it matches the pinned value for its file name; `error` (saying what to do
    `instead`) otherwise."""
    pinned = PINNED_SHA256 if pinned is None else pinned
    digest = hashlib.sha256()
    with open(wheel, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    expected = pinned.get(wheel.name)
    if expected is None:
        raise error(f"{wheel}: no pinned sha256 for this platform's wheel ({actual}); {instead}")
    if actual != expected:
        raise error(f"{wheel}: sha256 {actual} does not match the pinned {expected}; delete it "
                    f"and retry (`greentune doctor --fetch`), or {instead}")
    return actual


def _unpack(wheel: Path, root: Path) -> None:
    """Extract the server tree and libraries into a unique temp dir beside root, keeping the executable bits
    zipfile drops, then move it into place (called under cache_lock)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}."))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if not info.filename.startswith(("pytriton/tritonserver/", "nvidia_pytriton.libs/")):
                    continue
                path = Path(archive.extract(info, tmp))
                mode = info.external_attr >> 16
                if mode & 0o111:
                    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
