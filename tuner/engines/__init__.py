"""Load engines behind one Protocol: the built-in multi-process gRPC client and perf_analyzer.

The bench defines windows by wall clock (time.time_ns()) and meters them; an engine only drives the server and
reports per-request records (send, done, ok), which the bench bins into its windows by completion time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from tuner.engines.records import RequestRecords, bin_window
from tuner.errors import BadInput
from tuner.inputs import Sample
from tuner.load import LoadSpec

# The engines and pa_install are imported where one is chosen, not above: every spawned builtin worker imports this
# package first, and the perf_analyzer side (pa_install pulls in the whole server package) would slow each one's start.
ENGINE_NAMES = ("builtin", "perf_analyzer")
CHOICES = ("auto", *ENGINE_NAMES)

__all__ = ["CHOICES", "ENGINE_NAMES", "LoadEngine", "RequestRecords", "bin_window", "resolve_engine", "run_engine"]


class LoadEngine(Protocol):
    """A running load: drain() returns records completed since the last call; stop() ends the load and returns the rest.

    `live` engines report records while they run (the built-in); others only at stop() (perf_analyzer writes its
    export at exit), and the bench uses Triton's inference count for its online stability check instead.
    """

    name: str
    live: bool

    def drain(self) -> RequestRecords:
        """Records of the requests that completed since the previous drain."""
        ...

    def stop(self) -> RequestRecords:
        """Stop sending, wait for requests in flight, return the records not drained yet."""
        ...


def resolve_engine(choice: str, perf_analyzer: Path | None = None) -> str:
    """auto -> perf_analyzer where it is found (given, on PATH or fetched), else builtin; others are checked."""
    from tuner.engines.pa_install import PerfAnalyzerUnavailable, find_perf_analyzer

    if choice not in CHOICES:
        raise BadInput(f"--load-generator {choice}: expected one of {', '.join(CHOICES)}")
    if choice == "builtin":
        if perf_analyzer is not None:
            raise BadInput("--perf-analyzer is only used with --load-generator perf_analyzer or auto")
        return choice
    try:
        find_perf_analyzer(perf_analyzer)
    except PerfAnalyzerUnavailable as exc:
        if choice == "auto":
            return "builtin"
        raise BadInput(f"--load-generator perf_analyzer: {exc}") from None
    return "perf_analyzer"


@contextlib.contextmanager
def run_engine(grpc_url: str, model: str, samples: list[Sample], load: LoadSpec) -> Iterator[LoadEngine]:
    """Start the engine named by load.engine, driving `model` at `load`; it is stopped on exit."""
    if load.engine == "perf_analyzer":
        from tuner.engines.perf_analyzer import PerfAnalyzerEngine

        engine: LoadEngine = PerfAnalyzerEngine(grpc_url, model, samples, load)
    elif load.engine == "builtin":
        from tuner.engines.builtin import BuiltinEngine

        engine = BuiltinEngine(grpc_url, model, samples, load)
    else:
        raise BadInput(f"--load-generator {load.engine}: expected one of {', '.join(ENGINE_NAMES)}")
    try:
        yield engine
    except BaseException:
        # The original error (server died, Ctrl-C) is what matters; the engine is stopped either way.
        with contextlib.suppress(Exception):
            engine.stop()
        raise
    engine.stop()  # idempotent: a no-op when the bench already stopped it
