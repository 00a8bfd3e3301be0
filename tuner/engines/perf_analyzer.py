"""perf_analyzer as a load engine: one run per measurement, stopped with SIGINT, per-request export parsed by stream.

perf_analyzer checks its SIGINT flag after each measurement interval, so it runs with 250 ms intervals and a
stability target it never meets; on SIGINT it finishes the interval and writes `--profile-export-file` (wall-clock
ns, the same clock as time.time_ns()). The export (~80 bytes a request from 2.43; from 2.44 on it also holds every
request's tensors, ~5.6 KB a request for the example model) goes where there is room for it (tmpfs first), is read
by tuner/engines/pa_export.py, and is deleted at once. Open loop sends asynchronously: the synchronous sender
delivered 1,372 of 1,800 infer/s here, and 1,100-3,200 of 6,000 on an H200.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from tuner.engines.pa_export import (
    INTERVAL_MS,
    RESERVATION,
    expected_requests,
    export_bytes_per_request,
    export_dir,
    exports_tensors,
    free_space_text,
    parse_export,
)
from tuner.engines.pa_install import find_perf_analyzer
from tuner.engines.records import RequestRecords
from tuner.errors import LoadGenerationError, LoadToolError
from tuner.inputs import Sample
from tuner.load import LoadSpec

__all__ = ["PerfAnalyzerEngine", "input_data_document", "load_arguments", "parse_export"]

START_TIMEOUT_S = 60.0
STOP_STALL_S = 60.0  # after SIGINT: give up when perf_analyzer has used no CPU for this long...
STOP_LIMIT_S = 1800.0  # ...or after this long in all (2.51 writes every tensor it sent: gigabytes on a fast GPU)
STARTED = re.compile(r"^(Request concurrency|Request Rate): ", re.MULTILINE)
REQUEST_FAILED = "had error"  # perf_analyzer's words when the server failed a request ("Thread [0] had error: ...")
RATE_PER_THREAD = 1500  # open loop: a sending thread per this many requests/s (at least 4, at most 16)


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


def load_arguments(load: LoadSpec) -> list[str]:
    """perf_analyzer's flags for the load: closed loop at the concurrency, or open loop sending asynchronously from
    enough threads to keep the asked rate."""
    if load.concurrency is not None:
        return ["--concurrency-range", str(load.concurrency)]
    rate = float(load.request_rate_per_s or 1.0)
    threads = min(16, max(4, math.ceil(rate / RATE_PER_THREAD)))
    return ["--request-rate-range", f"{rate:g}", "--request-distribution", "constant", "--async",
            "--max-threads", str(threads)]


class PerfAnalyzerEngine:
    """One perf_analyzer process driving the model at the load's concurrency or rate, same inputs as built-in."""

    name = "perf_analyzer"
    live = False

    def __init__(self, grpc_url: str, model: str, samples: list[Sample], load: LoadSpec) -> None:
        install = find_perf_analyzer(load.perf_analyzer)
        self.source = install.source
        self._stopped = False
        self._request_timeout_s = load.request_timeout_s
        max_batch, outputs = _model_io(grpc_url, model)
        per_request = export_bytes_per_request(samples, outputs,
                                               exports_tensors(install.binary, tuple(sorted(install.env.items()))))
        self.export_need_bytes = per_request * expected_requests(load)
        self._dir = Path(tempfile.mkdtemp(prefix="greentune-pa-", dir=export_dir(self.export_need_bytes)))
        self._export = self._dir / "export.json"
        self._log = self._dir / "perf_analyzer.log"
        inputs = self._dir / "inputs.json"
        cmd = [str(install.binary), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", "1",
               "--input-data", str(inputs), "--measurement-interval", str(INTERVAL_MS),
               "--max-trials", "1000000", "--stability-percentage", "0.001",
               "--profile-export-file", str(self._export), *load_arguments(load)]
        self.command = cmd
        try:
            # The room this run holds until its export is deleted: other runs starting meanwhile leave it free.
            (self._dir / RESERVATION).write_text(f"{os.getpid()} {self.export_need_bytes}")
            inputs.write_text(json.dumps(input_data_document(samples, max_batch > 0)))
            with open(self._log, "wb") as log:
                # Its own session: a Ctrl-C at the terminal reaches greentune, which stops perf_analyzer itself.
                self._proc = subprocess.Popen(cmd, env={**os.environ, **install.env}, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise LoadToolError(f"perf_analyzer {install.binary} could not start in {self._dir}: "
                                f"{exc.strerror or exc} ({free_space_text(self._dir.parent)})") from None
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
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
                raise self._exited()
            time.sleep(0.05)
        raise LoadToolError(f"perf_analyzer did not start sending within {START_TIMEOUT_S:.0f} s: {self._tail()}")

    def drain(self) -> RequestRecords:
        """Nothing until the end (perf_analyzer writes its export at exit); fails if it stopped on its own."""
        if self._proc.poll() is not None and not self._stopped:
            raise self._exited()
        return RequestRecords()

    def stop(self) -> RequestRecords:
        """SIGINT, wait for the export, parse it (what a damaged one holds, with its damage), delete it (idempotent)."""
        if self._stopped:
            return RequestRecords()
        self._stopped = True
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
                self._wait_stopped()
            if self._proc.returncode != 0:
                raise self._exited()
            if not self._export.exists():
                raise LoadToolError(f"perf_analyzer exited without writing its export {self._export} "
                                    f"({free_space_text(self._dir)}): {self._tail()}")
            return parse_export(self._export, self._request_timeout_s, keep_partial=True)
        except BaseException:
            # A second Ctrl-C while it writes its export reaches greentune alone (perf_analyzer has its own session):
            # kill it rather than leave it running.
            self._kill()
            raise
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _exited(self) -> LoadGenerationError:
        """perf_analyzer stopped on its own: the config's failure when the server failed its requests, else the tool's."""
        code, tail = self._proc.returncode, self._tail()
        message = f"perf_analyzer exited with code {code}: {tail}"
        return LoadGenerationError(message) if REQUEST_FAILED in tail else LoadToolError(message)

    def _wait_stopped(self, stall_s: float = STOP_STALL_S, limit_s: float = STOP_LIMIT_S) -> None:
        """Wait for the exit after SIGINT while perf_analyzer is working (its CPU time grows: on an H100 at ~11k
        infer/s 2.51 spent over a minute writing a multi-GB export); kill it once it stalls or overruns."""
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
                raise LoadToolError(f"perf_analyzer did not stop after SIGINT: it {why}")

    def _kill(self) -> None:
        """SIGKILL perf_analyzer's process group (its own session: no Ctrl-C at the terminal reaches it), reap it."""
        if self._proc.poll() is None:  # not reaped yet, so its pid (= its group's id) cannot name another process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.kill()  # started outside a session of its own (tests' stand-ins): the process alone
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


def _model_io(grpc_url: str, model: str) -> tuple[int, list[tuple[str, int]]]:
    """The loaded model's max_batch_size (0: no batch dimension in the request shapes) and its outputs as (numpy
    dtype kind, elements per request; a variable dim counts 1,024)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException, triton_to_np_dtype

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        config = client.get_model_config(model, as_json=True)["config"]
    except InferenceServerException as exc:
        raise LoadGenerationError(f"cannot read the config of {model} for perf_analyzer: {exc.message()}") from None
    finally:
        client.close()
    outputs = []
    for output in config.get("output", []):
        dtype = triton_to_np_dtype(str(output.get("data_type", "TYPE_FP32")).removeprefix("TYPE_"))
        kind = np.dtype(dtype).kind if dtype is not None else "f"
        outputs.append((kind, math.prod(int(d) if int(d) > 0 else 1024 for d in output.get("dims", []))))
    return int(config.get("max_batch_size", 0) or 0), outputs
