"""Load engines without a server: perf_analyzer's export parsing, binning into windows, merging worker records."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tuner.engines import RequestRecords, bin_window, resolve_engine
from tuner.engines.builtin import _Recorder, shares, worker_count
from tuner.engines.perf_analyzer import PerfAnalyzerEngine, input_data_document, parse_export
from tuner.errors import BadInput, LoadGenerationError
from tuner.inputs import InputSpec, load_input_data, synthetic_samples
from tuner.load import LoadSpec
from tuner.measure import count_warnings
from tuner.server.metrics import parse_inference_count

T0 = 1_795_693_321_446_201_880  # wall-clock ns, as perf_analyzer 2.51 writes them


def _export(requests: list[tuple[int, list[int]]]) -> str:
    """An export in perf_analyzer 2.51's own layout (key order and nesting as it writes them)."""
    rng = np.random.default_rng(1)
    items = []
    for sent, responses in requests:
        items.append({"timestamp": sent, "request_inputs": {"INPUT": rng.standard_normal(4).tolist()},
                      "response_timestamps": responses,
                      "response_outputs": [{"OUTPUT": [0.5, -1e-30, 2.0]} for _ in responses]})
    doc = {"experiments": [{"experiment": {"mode": "concurrency", "value": 4}, "requests": items,
                            "window_boundaries": [T0, T0 + 300_000_000]}],
           "version": "2.51.0", "service_kind": "triton", "endpoint": ""}
    return json.dumps(doc, separators=(",", ":"))


def test_parse_export_reads_send_and_last_response_of_every_request(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(_export([(T0, [T0 + 2_500_000]), (T0 + 10, [T0 + 1_000_000, T0 + 4_000_000]), (T0 + 20, [])]))
    records = parse_export(path)
    assert records.send_ns.tolist() == [T0, T0 + 10, T0 + 20]
    assert records.done_ns.tolist() == [T0 + 2_500_000, T0 + 4_000_000, T0 + 20]
    assert records.ok.tolist() == [True, True, False]
    assert records.errors  # a request without a response is a failure with a message


def test_parse_export_of_an_empty_file_has_no_records(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_bytes(b"")
    assert len(parse_export(tmp_path / "e.json")) == 0


def test_requests_are_binned_into_windows_by_completion_time() -> None:
    ms = 1_000_000
    send = np.array([0, 5, 990, 1005, 1990, 2500]) * ms + T0
    done = np.array([10, 20, 1002, 1010, 2001, 2600]) * ms + T0
    ok = np.array([True, True, True, False, True, True])
    records = RequestRecords(send, done, ok, ("UNAVAILABLE: boom",))
    first = bin_window(records, T0, T0 + 1000 * ms)
    second = bin_window(records, T0 + 1000 * ms, T0 + 2000 * ms)
    third = bin_window(records, T0 + 2000 * ms, T0 + 3000 * ms)
    assert first.latencies_ms == [10.0, 15.0] and first.failure_count == 0
    # Sent in the first window, completed in the second: counted (and ranked) where it completed.
    assert second.latencies_ms == [12.0] and second.failure_count == 1 and second.errors == ["UNAVAILABLE: boom"]
    assert third.latencies_ms == [11.0, 100.0]
    assert first.duration_s == second.duration_s == 1.0
    assert sum(w.success_count + w.failure_count for w in (first, second, third)) == len(records)


def test_worker_records_merge_exactly_and_percentiles_come_from_the_union() -> None:
    rng = np.random.default_rng(0)
    parts = []
    for worker in range(3):
        recorder = _Recorder()
        for _ in range(1000):
            sent = T0 + int(rng.integers(0, 10**9))
            recorder.send.append(sent)
            recorder.done.append(sent + int(rng.exponential(2e6 * (worker + 1))))
            recorder.ok.append(True)
        kind, (send, done, ok, errors) = recorder.take()
        assert kind == "records" and len(recorder.send) == 0  # taken, then emptied for the next window
        parts.append(RequestRecords(send, done, ok, tuple(errors)))
    merged = RequestRecords.merge(parts)
    assert len(merged) == 3000
    stats = bin_window(merged, T0, T0 + 2 * 10**9)
    union = np.concatenate([(p.done_ns - p.send_ns) / 1e6 for p in parts])
    assert stats.percentile_ms(99) == pytest.approx(float(np.percentile(union, 99)))
    averaged = np.mean([np.percentile((p.done_ns - p.send_ns) / 1e6, 99) for p in parts])
    assert stats.percentile_ms(99) != pytest.approx(averaged, rel=0.01)


def test_concurrency_is_split_over_workers_without_losing_requests() -> None:
    assert shares(32, 3) == [11, 11, 10] and sum(shares(7, 4)) == 7
    assert worker_count(LoadSpec(concurrency=1), cpus=16) == 1 and worker_count(LoadSpec(concurrency=32), cpus=16) == 4
    assert worker_count(LoadSpec(concurrency=64), cpus=2) == 2
    assert worker_count(LoadSpec(concurrency=None, request_rate_per_s=100), cpus=64) == 8


def test_samples_written_for_perf_analyzer_read_back_identically(tmp_path: Path) -> None:
    specs = [InputSpec("INPUT", "FP32", (1, 8)), InputSpec("IDS", "INT64", (1, 3))]
    samples = synthetic_samples(specs, count=3)
    path = tmp_path / "inputs.json"
    path.write_text(json.dumps(input_data_document(samples, batching=True)))
    again = load_input_data(path, specs)
    for before, after in zip(samples, again, strict=True):
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])
    assert json.loads(path.read_text())["data"][0]["INPUT"]["shape"] == [8]  # no batch dim: perf_analyzer's -b 1


def test_triton_inference_count_is_read_per_model() -> None:
    text = ('# HELP nv_inference_count Number of inferences performed\n# TYPE nv_inference_count counter\n'
            'nv_inference_count{model="mlp",version="1"} 1200\nnv_inference_count{model="mlp",version="2"} 34\n'
            'nv_inference_count{model="mlp_nobatch",version="1"} 99\n')
    assert parse_inference_count(text, "mlp") == 1234
    assert parse_inference_count(text, "other") is None


def test_a_window_whose_count_differs_from_tritons_by_over_2_percent_is_flagged() -> None:
    windows = [bin_window(RequestRecords(np.full(n, T0), np.full(n, T0 + 1), np.ones(n, np.bool_)), T0, T0 + 10**9)
               for n in (1000, 1000, 1000)]
    warnings = count_warnings(windows, [1015.0, 1030.0, None], "perf_analyzer")
    assert len(warnings) == 1 and warnings[0].startswith("window 2: perf_analyzer counted 1000 inferences")


def test_engine_choice_is_checked() -> None:
    assert resolve_engine("builtin") == "builtin"
    with pytest.raises(BadInput, match="--perf-analyzer is only used with"):
        resolve_engine("builtin", Path("/bin/true"))
    with pytest.raises(BadInput, match="--perf-analyzer /nonexistent: not an executable file"):
        resolve_engine("perf_analyzer", Path("/nonexistent"))
    with pytest.raises(BadInput, match="--load-generator"):
        LoadSpec(concurrency=4, engine="wrk")


def test_parse_export_fails_requests_answered_after_the_request_timeout(tmp_path: Path) -> None:
    # perf_analyzer 2.51 has no per-request timeout: --request-timeout is applied to its records instead.
    path = tmp_path / "export.json"
    path.write_text(_export([(T0, [T0 + 200_000_000]), (T0 + 10, [T0 + 2_000_000_010])]))
    records = parse_export(path, request_timeout_s=0.3)
    assert records.ok.tolist() == [True, False]
    assert records.done_ns.tolist() == [T0 + 200_000_000, T0 + 10 + 300_000_000]  # failed at its deadline
    assert any(e.startswith("Deadline Exceeded") for e in records.errors)
    assert parse_export(path).ok.tolist() == [True, True]  # without a timeout both are answers


def test_a_tritonclient_wheel_whose_sha256_is_not_pinned_is_refused_for_perf_analyzer(tmp_path: Path) -> None:
    from tuner.engines import pa_install
    from tuner.server.embedded import check_sha256

    wheel = tmp_path / next(iter(pa_install.PINNED_SHA256))
    wheel.write_bytes(b"not the wheel from PyPI")
    with pytest.raises(pa_install.PerfAnalyzerUnavailable, match="does not match the pinned"):
        check_sha256(wheel, pa_install.PINNED_SHA256, pa_install.PerfAnalyzerUnavailable, "give --perf-analyzer PATH")


def _stubborn(tmp_path: Path, body: str) -> PerfAnalyzerEngine:
    """An engine around a child that ignores SIGINT like perf_analyzer writing its export, then runs `body`."""
    engine = PerfAnalyzerEngine.__new__(PerfAnalyzerEngine)
    engine._dir = tmp_path
    engine._proc = subprocess.Popen([sys.executable, "-c", f"import signal, time\n"
                                     f"signal.signal(signal.SIGINT, signal.SIG_IGN)\n{body}"])
    return engine


def test_stop_waits_while_perf_analyzer_is_busy_writing_and_kills_it_once_it_stalls(tmp_path: Path) -> None:
    busy = _stubborn(tmp_path / "busy", "end = time.time() + 3\nwhile time.time() < end: pass")
    time.sleep(0.3)
    busy._proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    busy._wait_stopped(stall_s=1.0, limit_s=30.0)  # 3 s of CPU work: longer than the stall limit, still waited for
    assert busy._proc.returncode == 0 and time.monotonic() - started >= 2.0

    stuck = _stubborn(tmp_path / "stuck", "time.sleep(60)")
    time.sleep(0.3)
    stuck._proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    with pytest.raises(LoadGenerationError, match="used no CPU for 1 s"):
        stuck._wait_stopped(stall_s=1.0, limit_s=30.0)
    assert stuck._proc.poll() is not None and time.monotonic() - started < 10  # killed, not left behind


def test_the_export_goes_to_tmpfs_only_where_it_has_room(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tempfile
    from collections import namedtuple

    from tuner.engines import perf_analyzer as pa

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 20, 0, 64 << 20))  # a container's default
    assert pa.export_dir() == Path(tempfile.gettempdir())
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 << 30, 0, 32 << 30))
    monkeypatch.setattr(pa.os, "access", lambda path, mode: True)
    assert pa.export_dir() == Path("/dev/shm")
