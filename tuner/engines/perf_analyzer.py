"""perf_analyzer as a load engine: one run per measurement, stopped with SIGINT, per-request export parsed by stream.

perf_analyzer 2.51 checks its SIGINT flag after each measurement interval, so it runs with 250 ms intervals and a
stability target it never meets; on SIGINT it waits for requests in flight and writes `--profile-export-file`
(wall-clock ns, the same clock as time.time_ns()). The export (~5.6 KB per request: it holds every input tensor)
goes to tmpfs, is scanned through mmap without building a JSON tree, and is deleted at once.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil

from tuner.engines.pa_install import find_perf_analyzer
from tuner.engines.records import RequestRecords
from tuner.errors import LoadGenerationError
from tuner.inputs import Sample
from tuner.load import LoadSpec

INTERVAL_MS = 250  # how often perf_analyzer looks at its SIGINT flag
START_TIMEOUT_S = 60.0
STOP_STALL_S = 60.0  # after SIGINT: give up when perf_analyzer has used no CPU for this long...
STOP_LIMIT_S = 1800.0  # ...or after this long in all (it writes every tensor it sent: gigabytes on a fast GPU)
# One request in the export: {"timestamp":N,"request_inputs":{...},"response_timestamps":[N,...],...}; the tensors
# between the keys are most of the bytes (inside JSON strings a quote is escaped, so the keys cannot occur there).
SENT_KEY = b'"timestamp":'
RESPONSES_KEY = b'"response_timestamps":['
STARTED = re.compile(r"^(Request concurrency|Request Rate): ", re.MULTILINE)


EXPORT_TMPFS_MIN_FREE_BYTES = 2 << 30  # a container's 64 MB /dev/shm would cut a fast trial's export short


def export_dir() -> Path:
    """tmpfs (/dev/shm) where there is one with room to spare, else the system temp dir."""
    shm = Path("/dev/shm")
    try:
        roomy = shutil.disk_usage(shm).free >= EXPORT_TMPFS_MIN_FREE_BYTES
    except OSError:
        return Path(tempfile.gettempdir())
    return shm if roomy and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def parse_export(path: Path, request_timeout_s: float | None = None) -> RequestRecords:
    """Send and last-response times of every request in a perf_analyzer export; no response means failed.

    perf_analyzer 2.51 has no per-request timeout, so --request-timeout is applied here: a request answered later
    than that failed at its deadline ("Deadline Exceeded"), exactly as the built-in client would have recorded it.
    """
    timeout_ns = int(request_timeout_s * 1e9) if request_timeout_s is not None else None
    errors: list[str] = []
    send: list[int] = []
    done: list[int] = []
    ok: list[bool] = []
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return RequestRecords()
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            for sent, responses in _scan_records(view):
                send.append(sent)
                if not responses:
                    done.append(sent)
                    ok.append(False)
                    if "perf_analyzer: request without a response" not in errors:
                        errors.append("perf_analyzer: request without a response")
                    continue
                last = int(responses.rsplit(b",", 1)[-1])
                if timeout_ns is not None and last - sent > timeout_ns:
                    done.append(sent + timeout_ns)
                    ok.append(False)
                    if not any(e.startswith("Deadline Exceeded") for e in errors):
                        errors.append(f"Deadline Exceeded (answered after --request-timeout {request_timeout_s:g} s)")
                    continue
                done.append(last)
                ok.append(True)
    return RequestRecords(np.array(send, np.int64), np.array(done, np.int64), np.array(ok, np.bool_), tuple(errors))


def _scan_records(view: mmap.mmap) -> Iterator[tuple[int, bytes]]:
    """(send ns, the response-timestamp list's bytes) per request, by C-speed substring search past the tensors
    (a regex over them ran at ~70 MB/s; an H100 trial's export is gigabytes)."""
    find, pos = view.find, 0
    while (key := find(SENT_KEY, pos)) >= 0:
        start = key + len(SENT_KEY)
        end = start
        while view[end] in DIGITS:
            end += 1
        listed = find(RESPONSES_KEY, end)
        if listed < 0:
            raise LoadGenerationError(f"perf_analyzer's export: a request at byte {key} has no response_timestamps")
        first = listed + len(RESPONSES_KEY)
        last = find(b"]", first)
        yield int(view[start:end]), view[first:last]
        pos = last


DIGITS = frozenset(b"0123456789")


def input_data_document(samples: list[Sample], batching: bool) -> dict[str, object]:
    """The samples in perf_analyzer's --input-data JSON format (shape without the batch dim for batching models)."""
    data = []
    for sample in samples:
        entry: dict[str, object] = {}
        for name, value in sample.items():
            shape = list(value.shape[1:] if batching else value.shape)
            content = [v.decode() if isinstance(v, bytes) else v for v in value.reshape(-1).tolist()]
            entry[name] = {"content": content, "shape": shape}
        data.append(entry)
    return {"data": data}


class PerfAnalyzerEngine:
    """One perf_analyzer process driving the model at the load's concurrency or rate, same inputs as built-in."""

    name = "perf_analyzer"
    live = False

    def __init__(self, grpc_url: str, model: str, samples: list[Sample], load: LoadSpec) -> None:
        install = find_perf_analyzer(load.perf_analyzer)
        self.source = install.source
        self._dir = Path(tempfile.mkdtemp(prefix="greentune-pa-", dir=export_dir()))
        self._export = self._dir / "export.json"
        self._log = self._dir / "perf_analyzer.log"
        self._stopped = False
        self._request_timeout_s = load.request_timeout_s
        batching = _max_batch_size(grpc_url, model) > 0
        inputs = self._dir / "inputs.json"
        inputs.write_text(json.dumps(input_data_document(samples, batching)))
        cmd = [str(install.binary), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", "1",
               "--input-data", str(inputs), "--measurement-interval", str(INTERVAL_MS),
               "--max-trials", "1000000", "--stability-percentage", "0.001",
               "--profile-export-file", str(self._export)]
        if load.concurrency is not None:
            cmd += ["--concurrency-range", str(load.concurrency)]
        else:
            cmd += ["--request-rate-range", f"{load.request_rate_per_s:g}", "--request-distribution", "constant"]
        self.command = cmd
        with open(self._log, "wb") as log:
            # Its own session: a Ctrl-C at the terminal reaches greentune, which stops perf_analyzer itself.
            self._proc = subprocess.Popen(cmd, env={**os.environ, **install.env}, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_started()
        except BaseException:
            self._kill()
            raise

    def _wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if STARTED.search(self._log_text()):
                return
            if self._proc.poll() is not None:
                raise LoadGenerationError(f"perf_analyzer exited with code {self._proc.returncode}: {self._tail()}")
            time.sleep(0.05)
        raise LoadGenerationError(f"perf_analyzer did not start sending within {START_TIMEOUT_S:.0f} s: {self._tail()}")

    def drain(self) -> RequestRecords:
        """Nothing until the end (perf_analyzer writes its export at exit); fails if it stopped on its own."""
        if self._proc.poll() is not None and not self._stopped:
            raise LoadGenerationError(f"perf_analyzer exited with code {self._proc.returncode}: {self._tail()}")
        return RequestRecords()

    def stop(self) -> RequestRecords:
        """SIGINT, wait for the export, parse it, delete it (idempotent)."""
        if self._stopped:
            return RequestRecords()
        self._stopped = True
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
                self._wait_stopped()
            if self._proc.returncode != 0 or not self._export.exists():
                raise LoadGenerationError(f"perf_analyzer exited with code {self._proc.returncode} and "
                                          f"{'no' if not self._export.exists() else 'an'} export: {self._tail()}")
            return parse_export(self._export, self._request_timeout_s)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _wait_stopped(self, stall_s: float = STOP_STALL_S, limit_s: float = STOP_LIMIT_S) -> None:
        """Wait for the exit after SIGINT while perf_analyzer is working (its CPU time grows: on an H100 at ~11k
        infer/s it spent over a minute writing a multi-GB export); kill it once it stalls or overruns."""
        started = last_progress = time.monotonic()
        cpu = _cpu_seconds(self._proc.pid)
        while True:
            try:
                self._proc.wait(min(2.0, stall_s))
                return
            except subprocess.TimeoutExpired:
                pass
            now, used = time.monotonic(), _cpu_seconds(self._proc.pid)
            if used > cpu:
                cpu, last_progress = used, now
            if now - last_progress >= stall_s or now - started >= limit_s:
                self._kill()
                why = (f"used no CPU for {stall_s:.0f} s" if now - last_progress >= stall_s
                       else f"was still writing after {limit_s:.0f} s")
                raise LoadGenerationError(f"perf_analyzer did not stop after SIGINT: it {why}")

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _log_text(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self) -> str:
        lines = [line for line in self._log_text().splitlines() if line.strip()]
        return " | ".join(lines[-3:]) or "no output"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _max_batch_size(grpc_url: str, model: str) -> int:
    """The loaded model's max_batch_size (0: no batch dimension in the request shapes)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return int(client.get_model_config(model, as_json=True)["config"].get("max_batch_size", 0) or 0)
    except InferenceServerException as exc:
        raise LoadGenerationError(f"cannot read the config of {model} for perf_analyzer: {exc.message()}") from None
    finally:
        client.close()
