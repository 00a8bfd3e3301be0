"""Find perf_analyzer: --perf-analyzer PATH, else on PATH, else the copy fetched from the tritonclient wheel.

The fetched copy is perf_analyzer r24.02 (tritonclient 2.43.0), not 2.51: from r24.03 on, perf_analyzer copies every
request's output tensors (r24.04: also its inputs) into its records while it sends and writes them all into the
per-request export, gigabytes per trial on a GPU (~5.6 KB a request for the example model), which slowed a trial of
the fastest config to ~55 s and cut one export short. 2.43's export holds the send and response timestamps only
(~80 bytes a request). It speaks the same gRPC protocol: it drives a Triton 2.51 server, here and on an H200.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tuner.errors import GreentuneError
from tuner.fileio import atomic_path
from tuner.server.embedded import (
    cache_dir,
    cache_lock,
    check_sha256,
    download_wheel,
    embedded_triton,
    given_or_on_path,
)

TRITONCLIENT_VERSION = "2.43.0"  # r24.02: the last perf_analyzer whose export holds timestamps only (see above)
WHEEL_GLOB = f"tritonclient-{TRITONCLIENT_VERSION}-*.whl"
MEMBER = f"tritonclient-{TRITONCLIENT_VERSION}.data/data/bin/perf_analyzer"
# perf_analyzer links these by soname; the embedded server's libs hold them under hashed names.
# sha256 of each tritonclient wheel perf_analyzer is taken from (from PyPI); any other file is refused.
PINNED_SHA256 = {
    f"tritonclient-{TRITONCLIENT_VERSION}-py3-none-manylinux1_x86_64.whl":
        "a6ce7c1b170db4cc05f81c3bde1726ec65da8646f65dab9e0674eb9d564bec36",
}
NEEDED_LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


class PerfAnalyzerUnavailable(GreentuneError):
    """perf_analyzer is neither given, on PATH, nor fetched."""


@dataclass(frozen=True)
class PerfAnalyzer:
    """A perf_analyzer binary and the environment additions it needs."""

    binary: Path
    env: dict[str, str] = field(default_factory=dict)
    source: str = "PATH"


def perf_analyzer_home() -> Path:
    """Where the fetched copy lives: CACHE/perf_analyzer-2.43.0/{bin,lib}."""
    return cache_dir() / f"perf_analyzer-{TRITONCLIENT_VERSION}"


def find_perf_analyzer(explicit: Path | None = None, allow_fetch: bool = False) -> PerfAnalyzer:
    """--perf-analyzer PATH, else perf_analyzer on PATH, else the cached copy (fetched when allow_fetch)."""
    found = given_or_on_path(explicit, "--perf-analyzer", "perf_analyzer")
    if found is not None:
        return PerfAnalyzer(binary=found[0], source=found[1])
    return cached_perf_analyzer(allow_fetch=allow_fetch)


def cached_perf_analyzer(allow_fetch: bool = False) -> PerfAnalyzer:
    """The copy from the tritonclient wheel, with its two libraries linked from the embedded server's libs."""
    home = perf_analyzer_home()
    binary = home / "bin" / "perf_analyzer"
    if not binary.exists():
        if not allow_fetch:
            raise PerfAnalyzerUnavailable(
                f"perf_analyzer not found: give --perf-analyzer PATH, put it on PATH, or run `greentune doctor --fetch` "
                f"(takes it from tritonclient=={TRITONCLIENT_VERSION})")
        with cache_lock(f"perf_analyzer-{TRITONCLIENT_VERSION}"):  # two first runs at once: one fetches
            if not binary.exists():
                _extract_binary(_download_wheel(), binary)
    lib = home / "lib"
    _link_libraries(lib)
    return PerfAnalyzer(binary=binary, env={"LD_LIBRARY_PATH": os.pathsep.join(
        [str(lib), os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)},
        source=f"tritonclient {TRITONCLIENT_VERSION} wheel (cached; timestamps-only export)")


def _download_wheel() -> Path:
    """The tritonclient wheel, downloaded once (binary only) and checked against its pinned sha256."""
    wheel = download_wheel(f"tritonclient=={TRITONCLIENT_VERSION}", WHEEL_GLOB, PerfAnalyzerUnavailable,
                           "for perf_analyzer; give --perf-analyzer PATH instead")
    check_sha256(wheel, PINNED_SHA256, PerfAnalyzerUnavailable, "give --perf-analyzer PATH or put it on PATH")
    return wheel


def _extract_binary(wheel: Path, binary: Path) -> None:
    """Only the perf_analyzer member, written atomically and made executable."""
    binary.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(MEMBER)
        except KeyError:
            raise PerfAnalyzerUnavailable(f"{wheel}: has no {MEMBER}") from None
        with atomic_path(binary) as tmp:
            with archive.open(info) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            Path(tmp).chmod(0o755)


def _link_libraries(lib: Path) -> None:
    """Symlink libb64.so.0d and libcudart.so.12 from the embedded server's nvidia_pytriton.libs (once)."""
    if all((lib / name).exists() for name in NEEDED_LIBS):
        return
    try:
        triton = embedded_triton(allow_fetch=False)
    except GreentuneError as exc:
        raise PerfAnalyzerUnavailable(f"perf_analyzer needs the embedded server's libraries: {exc}") from None
    source = triton.binary.parents[3] / "nvidia_pytriton.libs"
    lib.mkdir(parents=True, exist_ok=True)
    for name, pattern in NEEDED_LIBS.items():
        found = sorted(source.glob(pattern))
        if not found:
            raise PerfAnalyzerUnavailable(f"{source}: no {pattern} for perf_analyzer's {name}")
        link = lib / name
        if link.is_symlink() or link.exists():
            link.unlink()
        tmp = lib / f".{name}.tmp{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found[-1])
        tmp.rename(link)
