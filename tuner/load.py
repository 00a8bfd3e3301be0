"""Load generator: asyncio gRPC closed loop (or open loop at a fixed rate), measured in windows. Knows no energy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from tuner.errors import BadInput
from tuner.inputs import Sample

MAX_ERROR_SAMPLES = 5
FAILURE_BACKOFF_S = 0.01


@dataclass(frozen=True)
class LoadSpec:
    """How hard the server is driven: closed loop at `concurrency`, or open loop at `request_rate_per_s`."""

    concurrency: int | None = 1
    request_rate_per_s: float | None = None
    request_timeout_s: float = 30.0
    max_outstanding: int = 512
    engine: str = "builtin"  # the load engine (tuner/engines): builtin or perf_analyzer
    perf_analyzer: Path | None = None  # --perf-analyzer PATH (else found on PATH or in the cache)
    run_s: float | None = None  # how long one engine run lasts at most (warm-up + windows); sizes what it records

    def __post_init__(self) -> None:
        if (self.concurrency is None) == (self.request_rate_per_s is None):
            raise BadInput("give exactly one of --concurrency and --request-rate")
        if self.concurrency is not None and not 1 <= self.concurrency <= 4096:
            raise BadInput(f"--concurrency: expected 1 to 4096, got {self.concurrency}")
        if self.request_rate_per_s is not None and not self.request_rate_per_s > 0:
            raise BadInput(f"--request-rate: expected a positive number of requests per second, got {self.request_rate_per_s}")
        if not self.request_timeout_s > 0:
            raise BadInput(f"--request-timeout: expected positive seconds, got {self.request_timeout_s}")
        if self.engine not in ("builtin", "perf_analyzer"):
            raise BadInput(f"--load-generator {self.engine}: expected builtin or perf_analyzer (auto is resolved first)")
        if self.run_s is not None and not self.run_s > 0:
            raise ValueError(f"run_s: expected positive seconds, got {self.run_s}")

    def describe(self) -> dict[str, object]:
        """JSON-able description for results and reports."""
        if self.concurrency is not None:
            return {"mode": "concurrency", "concurrency": self.concurrency, "engine": self.engine}
        return {"mode": "request_rate", "request_rate_per_s": self.request_rate_per_s, "engine": self.engine}


@dataclass
class WindowStats:
    """What completed inside one window: latencies of successes, failures and a few error messages."""

    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)
    failure_count: int = 0
    errors: list[str] = field(default_factory=list)
    sent_count: int | None = None  # requests sent in the window (by send time, whenever they completed); None: unknown

    @property
    def success_count(self) -> int:
        """Successful requests completed in the window."""
        return len(self.latencies_ms)

    @property
    def throughput_per_s(self) -> float:
        """Successful inferences per second."""
        return self.success_count / self.duration_s if self.duration_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Latency percentile in ms (nan with no successes)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def is_stable(throughputs: list[float], p99s_ms: list[float], tolerance: float, count: int = 3) -> bool:
    """perf_analyzer's rule: the last `count` windows' throughput and p99 each lie within tolerance of their mean."""
    if len(throughputs) < count or len(p99s_ms) < count:
        return False
    for series in (throughputs[-count:], p99s_ms[-count:]):
        if any(not np.isfinite(v) for v in series):
            return False
        mean = float(np.mean(series))
        if mean <= 0 or any(abs(v - mean) > tolerance * mean for v in series):
            return False
    return True


class LoadGenerator:
    """Drives one model with requests; `await window(seconds)` returns what completed in that span."""

    def __init__(self, grpc_url: str, model: str, samples: list[Sample], spec: LoadSpec) -> None:
        self.grpc_url = grpc_url
        self.model = model
        self.samples = samples
        self.spec = spec
        self._current: WindowStats | None = None
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._client: grpcaio.InferenceServerClient | None = None
        self._inputs = [self.make_inputs(s) for s in samples]

    @staticmethod
    def make_inputs(sample: Sample) -> list[InferInput]:
        inputs = []
        for name, array in sample.items():
            dtype = "BYTES" if array.dtype == np.object_ else _triton_dtype(array.dtype)
            item = InferInput(name, list(array.shape), dtype)
            item.set_data_from_numpy(array)
            inputs.append(item)
        return inputs

    async def __aenter__(self) -> LoadGenerator:
        self._client = grpcaio.InferenceServerClient(self.grpc_url)
        if self.spec.concurrency is not None:
            self._tasks = [asyncio.create_task(self._closed_loop(i)) for i in range(self.spec.concurrency)]
        else:
            self._tasks = [asyncio.create_task(self._open_loop())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()

    async def window(self, duration_s: float) -> WindowStats:
        """Collect completions for duration_s seconds (monotonic clock)."""
        start = time.perf_counter()
        stats = WindowStats(duration_s=duration_s)
        self._current = stats
        await asyncio.sleep(duration_s)
        self._current = None
        stats.duration_s = time.perf_counter() - start
        return stats

    async def _one(self, index: int, sent: float) -> None:
        assert self._client is not None
        inputs = self._inputs[index % len(self._inputs)]
        try:
            await self._client.infer(self.model, inputs, client_timeout=self.spec.request_timeout_s)
            ok, message = True, ""
        except InferenceServerException as exc:
            ok, message = False, exc.message() or str(exc)
        except Exception as exc:  # grpc transport errors surface as plain exceptions
            ok, message = False, f"{type(exc).__name__}: {exc}"
        latency_ms = (time.perf_counter() - sent) * 1000.0
        stats = self._current
        if stats is not None:
            if ok:
                stats.latencies_ms.append(latency_ms)
            else:
                stats.failure_count += 1
                if len(stats.errors) < MAX_ERROR_SAMPLES:
                    stats.errors.append(message.splitlines()[0][:200] if message else "request failed")
        if not ok:
            await asyncio.sleep(FAILURE_BACKOFF_S)

    async def _closed_loop(self, worker: int) -> None:
        index = worker
        while not self._stopping:
            await self._one(index, time.perf_counter())
            index += self.spec.concurrency or 1

    async def _open_loop(self) -> None:
        rate = float(self.spec.request_rate_per_s or 1.0)
        interval = 1.0 / rate
        next_send = time.perf_counter()
        index = 0
        pending: set[asyncio.Task[None]] = set()
        while not self._stopping:
            now = time.perf_counter()
            if now < next_send:
                await asyncio.sleep(next_send - now)
            if len(pending) >= self.spec.max_outstanding:
                # The server cannot keep up with the offered rate: count the request as failed, do not queue forever.
                stats = self._current
                if stats is not None:
                    stats.failure_count += 1
                    if len(stats.errors) < MAX_ERROR_SAMPLES:
                        stats.errors.append(f"over {self.spec.max_outstanding} requests outstanding at the offered rate")
            else:
                task = asyncio.create_task(self._one(index, next_send))
                pending.add(task)
                task.add_done_callback(pending.discard)
            index += 1
            next_send += interval
        for task in pending:
            task.cancel()


def _triton_dtype(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(dtype))
