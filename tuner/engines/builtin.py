"""The built-in load engine: worker processes (spawn), each an asyncio gRPC client with its share of the load.

Requests are built once per sample (protobuf, raw tensor bytes); each worker appends (send, done, ok) to flat arrays
and hands them over as numpy arrays when the bench drains, so latencies are merged exactly, never averaged.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from tuner.engines.records import RequestRecords
from tuner.errors import LoadToolError
from tuner.inputs import Sample
from tuner.load import FAILURE_BACKOFF_S, MAX_ERROR_SAMPLES, LoadSpec

READY_TIMEOUT_S = 60.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def worker_count(load: LoadSpec, cpus: int | None = None) -> int:
    """A worker per 8 requests in flight (closed loop), at most one per CPU and 8 in all."""
    cpus = cpus or os.cpu_count() or 1
    if load.concurrency is not None:
        return max(1, min(cpus, -(-load.concurrency // 8), 8))
    return max(1, min(cpus, 8))


def shares(total: int, parts: int) -> list[int]:
    """Split `total` requests in flight over `parts` workers as evenly as possible (sums to total)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class BuiltinEngine:
    """Closed loop (concurrency split over workers) or open loop (rate split over workers); live records."""

    name = "builtin"
    live = True

    def __init__(self, grpc_url: str, model: str, samples: list[Sample], load: LoadSpec,
                 workers: int | None = None) -> None:
        count = workers or worker_count(load)
        if load.concurrency is not None:
            plan: list[tuple[int, float | None]] = [(c, None) for c in shares(load.concurrency, count) if c > 0]
        else:
            rate = float(load.request_rate_per_s or 1.0)
            plan = [(0, rate / count) for _ in range(count)]
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Connection]] = []
        self._stopped = False
        try:
            for index, (concurrency, rate_per_s) in enumerate(plan):
                parent, child = context.Pipe()
                proc = context.Process(
                    target=run_worker, name=f"greentune-load-{index}", daemon=True,
                    args=(child, grpc_url, model, samples, concurrency, rate_per_s, load.request_timeout_s,
                          max(1, load.max_outstanding // len(plan)), index, len(plan)))
                proc.start()
                child.close()
                self._workers.append((proc, parent))
            for proc, conn in self._workers:
                if not conn.poll(READY_TIMEOUT_S):
                    raise LoadToolError(f"load worker {proc.name} did not start within {READY_TIMEOUT_S:.0f} s")
                self._expect(conn.recv(), "ready")
        except BaseException:
            self._kill()
            raise

    def drain(self) -> RequestRecords:
        """Ask every worker for what completed since the last drain and merge it."""
        return self._collect("drain")

    def stop(self) -> RequestRecords:
        """Stop every worker and return their last records (idempotent)."""
        if self._stopped:
            return RequestRecords()
        self._stopped = True
        try:
            return self._collect("stop")
        finally:
            for proc, conn in self._workers:
                proc.join(timeout=10)
                conn.close()
            self._kill()

    def _collect(self, command: str) -> RequestRecords:
        for proc, conn in self._workers:
            try:
                conn.send(command)
            except (BrokenPipeError, OSError):
                raise LoadToolError(f"load worker {proc.name} exited (code {proc.exitcode})") from None
        parts = []
        for proc, conn in self._workers:
            try:
                message = conn.recv()
            except EOFError:
                raise LoadToolError(f"load worker {proc.name} exited (code {proc.exitcode})") from None
            self._expect(message, "records")
            send, done, ok, errors = message[1]
            parts.append(RequestRecords(send, done, ok, tuple(errors)))
        return RequestRecords.merge(parts)

    @staticmethod
    def _expect(message: Any, kind: str) -> None:
        if isinstance(message, tuple) and message and message[0] == "error":
            raise LoadToolError(f"load worker failed: {message[1]}")
        if not (isinstance(message, tuple) and message and message[0] == kind):
            raise LoadToolError(f"load worker answered {message!r:.80}, expected {kind}")

    def _kill(self) -> None:
        for proc, _ in self._workers:
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)


class _Recorder:
    """Flat growable arrays of (send ns, done ns, ok); no object per request."""

    def __init__(self) -> None:
        self.send = array.array("q")
        self.done = array.array("q")
        self.ok = array.array("b")
        self.errors: list[str] = []

    def add_error(self, message: str) -> None:
        if len(self.errors) < MAX_ERROR_SAMPLES:
            self.errors.append(message.splitlines()[0][:200] if message else "request failed")

    def take(self) -> tuple[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]]:
        taken = (np.frombuffer(self.send, dtype=np.int64).copy(), np.frombuffer(self.done, dtype=np.int64).copy(),
                 np.frombuffer(self.ok, dtype=np.int8).astype(np.bool_), self.errors)
        self.send, self.done, self.ok, self.errors = array.array("q"), array.array("q"), array.array("b"), []
        return "records", taken


def build_requests(model: str, samples: list[Sample]) -> list[Any]:
    """One ModelInferRequest per sample, with raw tensor contents, built once."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    requests = []
    for sample in samples:
        request = service_pb2.ModelInferRequest(model_name=model)
        for name, value in sample.items():
            if value.dtype == np.object_:
                datatype, raw = "BYTES", serialize_byte_tensor(value).tobytes()
            else:
                datatype, raw = str(np_to_triton_dtype(value.dtype)), np.ascontiguousarray(value).tobytes()
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, datatype
            tensor.shape.extend(value.shape)
            request.raw_input_contents.append(raw)
        requests.append(request)
    return requests


def run_worker(conn: Connection, grpc_url: str, model: str, samples: list[Sample], concurrency: int,
               rate_per_s: float | None, timeout_s: float, max_outstanding: int, index: int, workers: int) -> None:
    """Worker process entry: drive the server until told to stop; answer drains with records."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    try:
        asyncio.run(_work(conn, grpc_url, model, samples, concurrency, rate_per_s, timeout_s, max_outstanding,
                          index, workers))
    except Exception as exc:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _work(conn: Connection, grpc_url: str, model: str, samples: list[Sample], concurrency: int,
                rate_per_s: float | None, timeout_s: float, max_outstanding: int, index: int, workers: int) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    requests = build_requests(model, samples)
    channel = grpc.aio.insecure_channel(grpc_url, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                           ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    await asyncio.wait_for(channel.channel_ready(), READY_TIMEOUT_S)
    recorder = _Recorder()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        try:
            command = conn.recv()
        except EOFError:
            command = "stop"
        if command == "drain":
            conn.send(recorder.take())
        else:
            stopping.set()

    loop.add_reader(conn.fileno(), on_command)
    infer = stub.ModelInfer
    time_ns = time.time_ns

    async def one(request: Any) -> bool:
        sent = time_ns()
        try:
            await infer(request, timeout=timeout_s)
            ok = True
        except grpc.aio.AioRpcError as exc:
            ok = False
            recorder.add_error(exc.details() or exc.code().name)  # Triton's own words, as the old client gave them
        done = time_ns()
        # The recorder's arrays are swapped on each drain: always append to the current ones.
        recorder.send.append(sent)
        recorder.done.append(done)
        recorder.ok.append(ok)
        return ok

    async def closed_loop(slot: int) -> None:
        position = slot
        while not stopping.is_set():
            if not await one(requests[position % len(requests)]):
                await asyncio.sleep(FAILURE_BACKOFF_S)
            position += concurrency

    async def open_loop(rate: float) -> None:
        interval_ns = int(1e9 / rate)
        next_ns = time_ns() + int(interval_ns * index / workers)  # workers interleave their sends
        pending: set[asyncio.Task[bool]] = set()
        position = index
        while not stopping.is_set():
            delay = next_ns - time_ns()
            if delay > 0:
                await asyncio.sleep(delay / 1e9)
            if len(pending) >= max_outstanding:
                # The server cannot keep up with the offered rate: a failed request, not an unbounded queue.
                now = time_ns()
                recorder.send.append(now)
                recorder.done.append(now)
                recorder.ok.append(False)
                recorder.add_error(f"over {max_outstanding} requests outstanding at the offered rate")
            else:
                task = asyncio.create_task(one(requests[position % len(requests)]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            position += workers
            next_ns += interval_ns
        if pending:
            await asyncio.wait(pending, timeout=min(timeout_s, 10.0))

    conn.send(("ready", os.getpid()))
    if rate_per_s is not None:
        tasks = [asyncio.create_task(open_loop(rate_per_s))]
    else:
        tasks = [asyncio.create_task(closed_loop(slot)) for slot in range(concurrency)]
    await stopping.wait()
    # Requests in flight finish (or time out) and are recorded before the last records go back.
    _, late = await asyncio.wait(tasks, timeout=min(timeout_s, 10.0))
    for task in late:
        task.cancel()
    loop.remove_reader(conn.fileno())
    conn.send(recorder.take())
    await channel.close()
