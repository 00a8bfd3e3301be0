"""Load engines without a server: perf_analyzer's export parsing, binning into windows, merging worker records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tuner.engines import RequestRecords, bin_window, resolve_engine
from tuner.engines import pa_export as pa
from tuner.engines.builtin import _Recorder, shares, worker_count
from tuner.engines.perf_analyzer import PerfAnalyzerEngine, input_data_document, load_arguments, parse_export
from tuner.engines.records import covered_windows
from tuner.errors import BadInput, LoadGenerationError, LoadToolError
from tuner.inputs import InputSpec, load_input_data, synthetic_samples
from tuner.load import LoadSpec, WindowStats
from tuner.measure import check_request_rate, count_warnings
from tuner.server.metrics import parse_inference_count

T0 = 1_795_693_321_446_201_880  # wall-clock ns, as perf_analyzer 2.51 writes them


def _export(requests: list[tuple[int, list[int]]], tensors: bool = True) -> str:
    """An export in perf_analyzer's own layout (key order and nesting as it writes them): 2.51 with each request's
    tensors, or 2.43 with timestamps only."""
    rng = np.random.default_rng(1)
    items: list[dict[str, object]] = []
    for sent, responses in requests:
        if tensors:
            items.append({"timestamp": sent, "request_inputs": {"INPUT": rng.standard_normal(4).tolist(),
                                                                "TEXT": 'a "timestamp":1 in a string'},
                          "response_timestamps": responses,
                          "response_outputs": [{"OUTPUT": [0.5, -1e-30, 2.0]} for _ in responses]})
        else:
            items.append({"timestamp": sent, "response_timestamps": responses})
    doc: dict[str, object] = {"experiments": [{"experiment": {"mode": "concurrency", "value": 4}, "requests": items,
                                               "window_boundaries": [T0, T0 + 300_000_000]}]}
    doc.update({"version": "2.51.0", "service_kind": "triton", "endpoint": ""} if tensors else {"version": "2.43.0"})
    return json.dumps(doc, separators=(",", ":"))


def _spaced(count: int) -> list[tuple[int, list[int]]]:
    """Requests completing 400 ms apart, in order (as perf_analyzer lists them, window after window)."""
    return [(T0 + i * 400_000_000, [T0 + i * 400_000_000 + 3_000_000]) for i in range(count)]


def test_parse_export_reads_send_and_last_response_of_every_request(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    path.write_text(_export([(T0, [T0 + 2_500_000]), (T0 + 10, [T0 + 1_000_000, T0 + 4_000_000]), (T0 + 20, [])]))
    records = parse_export(path)
    assert records.send_ns.tolist() == [T0, T0 + 10, T0 + 20]
    assert records.done_ns.tolist() == [T0 + 2_500_000, T0 + 4_000_000, T0 + 20]
    assert records.ok.tolist() == [True, True, False]
    assert records.errors  # a request without a response is a failure with a message


@pytest.mark.parametrize("tensors", [True, False], ids=["2.51", "2.43"])
def test_both_export_formats_are_read_whole(tmp_path: Path, tensors: bool) -> None:
    path = tmp_path / "export.json"
    path.write_text(_export(_spaced(5), tensors))
    records = parse_export(path)
    assert records.send_ns.tolist() == [s for s, _ in _spaced(5)] and records.ok.all()
    assert records.done_ns.tolist() == [r[-1] for _, r in _spaced(5)]
    assert not records.damage and records.complete_until_ns is None
    path.write_text(_export([], tensors))  # no request completed: intact, and empty
    assert len(parse_export(path)) == 0 and not parse_export(path, keep_partial=True).damage


@pytest.mark.parametrize("tensors", [True, False], ids=["2.51", "2.43"])
def test_an_export_cut_anywhere_is_one_line_naming_it_and_keeps_the_requests_before_the_cut(
        tmp_path: Path, tensors: bool) -> None:
    data = _export(_spaced(6), tensors).encode()
    full = parse_export_bytes(tmp_path / "full.json", data)
    path = tmp_path / "export.json"
    for cut in range(len(data)):  # every byte: inside digits, tensors, response lists, between requests, the end
        path.write_bytes(data[:cut])
        with pytest.raises(LoadToolError) as raised:
            parse_export(path)
        message = str(raised.value)
        assert "\n" not in message and str(path) in message and "free on its filesystem" in message, message
        kept = parse_export(path, keep_partial=True)
        assert kept.damage == message
        assert kept.send_ns.tolist() == full.send_ns[:len(kept)].tolist()  # what was read, as it was
        if kept.complete_until_ns is None:  # every request was read (the cut came after the request list)
            assert len(kept) == len(full), cut
        else:  # nothing that completed before complete_until_ns is missing, and that is as late as it can be
            assert not (full.done_ns[len(kept):] < kept.complete_until_ns).any(), cut
            if len(kept):
                assert kept.complete_until_ns == int(kept.done_ns.max()) - pa.WINDOW_BOUND_NS


def parse_export_bytes(path: Path, data: bytes) -> RequestRecords:
    path.write_bytes(data)
    return parse_export(path)


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d.replace(b'"INPUT":[', b'"INPUT":["timestamp":5,', 1), "a timestamp key inside the request"),
    (lambda d: d[:300] + b"\0" * 40 + d[340:], "NUL byte"),
    (lambda d: d.replace(b'"response_timestamps":[', b'"response_timestamps":[x', 1), "not a list of nanosecond"),
    (lambda d: d.replace(b'{"timestamp":', b'{"timestamp":-', 1), "not a number"),
    (lambda d: d.replace(b'],"window_boundaries"', b'],"windows"', 1), "not followed by window boundaries"),
    (lambda d: b'{"experiments":[]}', "no request list"),
    (lambda d: b"", "it is empty"),
], ids=["key-in-tensor", "nul-hole", "letters-in-responses", "negative-timestamp", "renamed-key", "no-list", "empty"])
def test_a_damaged_export_is_one_load_tool_error_never_a_traceback(tmp_path: Path, damage, expected: str) -> None:
    path = tmp_path / "export.json"
    path.write_bytes(damage(_export(_spaced(4)).encode()))
    with pytest.raises(LoadToolError, match=expected):
        parse_export(path)
    assert parse_export(path, keep_partial=True).damage


def test_damaged_records_keep_the_windows_before_the_damage_and_fail_when_too_few_are_left() -> None:
    second = 1_000_000_000
    done = T0 + np.arange(0, 10 * second, second // 100)
    records = RequestRecords(done - 2_000_000, done, np.ones(len(done), np.bool_), (), "export cut", T0 + 6 * second)
    spans = [(T0 + i * 2 * second, T0 + (i + 1) * 2 * second) for i in range(5)]
    kept, note = covered_windows(records, spans, needed=3)
    assert kept == 3 and note is not None and note.startswith("export cut") and "2 after it dropped" in note
    assert bin_window(records, *spans[2]).success_count == 200
    with pytest.raises(LoadToolError, match="export cut"):
        bin_window(records, *spans[3])  # a window the records do not cover is never a silent, short count
    with pytest.raises(LoadToolError, match="export cut"):
        covered_windows(records, spans, needed=4)
    intact = RequestRecords(records.send_ns, records.done_ns, records.ok)
    assert covered_windows(intact, spans, needed=3) == (5, None)
    # Damage after the request list (complete_until_ns None): every window stays, with a note.
    late = RequestRecords(records.send_ns, records.done_ns, records.ok, (), "export tail cut")
    assert covered_windows(late, spans, needed=3)[0] == 5
    # An empty but damaged part is not dropped when drains are merged.
    merged = RequestRecords.merge([RequestRecords(), RequestRecords(damage="export empty", complete_until_ns=0)])
    assert merged.damage == "export empty" and not merged.covers(T0)


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
    with pytest.raises(LoadToolError, match="used no CPU for 1 s"):
        stuck._wait_stopped(stall_s=1.0, limit_s=30.0)
    assert stuck._proc.poll() is not None and time.monotonic() - started < 10  # killed, not left behind


def test_the_export_goes_where_it_has_room_for_its_requests_and_the_runs_in_progress(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    shm, temp = tmp_path / "shm", tmp_path / "tmp"
    shm.mkdir(), temp.mkdir()
    free = {shm: 64 << 20, temp: 10 << 30}  # a container's default /dev/shm; a roomy disk
    monkeypatch.setattr(pa, "TMPFS", shm)
    monkeypatch.setattr(pa.tempfile, "gettempdir", lambda: str(temp))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, free[Path(path)]))
    assert pa.export_dir(1 << 20) == shm  # 1 MB: tmpfs has room
    assert pa.export_dir(100 << 20) == temp  # 100 MB: not on a 64 MB tmpfs
    # A run in progress (its process alive) holds its room; one whose process is gone does not.
    running = shm / "greentune-pa-running"
    running.mkdir()
    (running / pa.RESERVATION).write_text(f"{os.getpid()} {60 << 20}")
    gone = shm / "greentune-pa-gone"
    gone.mkdir()
    (gone / pa.RESERVATION).write_text(f"{_dead_pid()} {60 << 20}")
    assert pa.reserved_bytes(shm) == 60 << 20 and pa.reserved_bytes(shm, own=running) == 0
    assert pa.export_dir(8 << 20) == temp
    with pytest.raises(LoadToolError) as raised:
        pa.export_dir(20 << 30)
    message = str(raised.value)
    assert "needs ~21.5 GB" in message and f"{temp} has 10.7 GB free" in message, message
    assert f"{shm} has 67 MB free (63 MB held by runs in progress)" in message and "\n" not in message


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_export_need_is_bytes_per_request_times_the_requests_the_load_can_complete() -> None:
    samples = synthetic_samples([InputSpec("INPUT", "FP32", (1, 256))], count=2)
    outputs = [("f", 16)]
    assert pa.export_bytes_per_request(samples, outputs, tensors=False) == pa.TIMESTAMPS_ONLY_BYTES  # 2.43
    with_tensors = pa.export_bytes_per_request(samples, outputs, tensors=True)
    assert 5_600 <= with_tensors <= 8_000  # ~5.6 KB a request measured for mlp with 2.51
    rate = pa.expected_requests(LoadSpec(concurrency=None, request_rate_per_s=1000, run_s=20))
    assert 1000 * 20 < rate < 1000 * 40
    closed = pa.expected_requests(LoadSpec(concurrency=4, run_s=20))
    assert closed >= 4 * pa.MAX_RATE_PER_IN_FLIGHT * 20  # a generous bound: 1.3k infer/s measured at 4 here
    assert pa.expected_requests(LoadSpec(concurrency=4096, run_s=20)) <= pa.MAX_RATE_PER_S * 40
    assert pa.expected_requests(LoadSpec(concurrency=4)) > closed  # no run length given: a long one assumed


def test_perf_analyzer_version_says_whether_its_export_holds_tensors(tmp_path: Path) -> None:
    for version, tensors in (("2.43.0", False), ("2.44.0", True), ("2.51.0", True), ("unknown", True)):
        binary = tmp_path / f"pa-{version}"
        binary.write_text(f"#!/bin/sh\necho 'Perf Analyzer Version {version} (commit abc)'\n")
        binary.chmod(0o755)
        assert pa.exports_tensors(binary, ()) is tensors, version


def test_open_loop_sends_asynchronously_from_enough_threads() -> None:
    assert load_arguments(LoadSpec(concurrency=8)) == ["--concurrency-range", "8"]
    args = load_arguments(LoadSpec(concurrency=None, request_rate_per_s=1200))
    assert args[:2] == ["--request-rate-range", "1200"] and "--async" in args
    assert args[args.index("--max-threads") + 1] == "4"
    many = load_arguments(LoadSpec(concurrency=None, request_rate_per_s=60_000))
    assert many[many.index("--max-threads") + 1] == "16"


def _window(sent: int, completed: int, latency_ms: float = 3.0, duration_s: float = 2.0) -> WindowStats:
    return WindowStats(duration_s=duration_s, latencies_ms=[latency_ms] * completed, sent_count=sent)


def test_an_open_loop_short_of_the_asked_rate_is_never_a_silent_figure() -> None:
    from tuner.measure import MeasureSettings, summarize
    from tuner.objective import Constraints, violations
    from tuner.results import TrialConfig

    load = LoadSpec(concurrency=None, request_rate_per_s=1200, engine="perf_analyzer")
    assert check_request_rate(load, [_window(2400, 2390)] * 3) is None  # delivered
    # The client sent 573/s: the load tool's failure, not the config's.
    with pytest.raises(LoadToolError, match="perf_analyzer sent 573 requests/s of the asked 1200"):
        check_request_rate(load, [_window(1146, 1146)] * 3)
    # Sent at the rate, completed 900/s: the config cannot keep up, a constraint violation with a warning.
    windows = [(_window(2400, 1800), []) for _ in range(3)]
    m = summarize(TrialConfig(), load, windows, MeasureSettings())
    assert any("cannot keep up" in w and "900 infer/s of the asked 1200" in w for w in m.warnings), m.warnings
    assert violations(m, Constraints())["request_rate"] == pytest.approx((1140 - 900) / 1140)
    delivered = summarize(TrialConfig(), load, [(_window(2400, 2398), []) for _ in range(3)], MeasureSettings())
    assert violations(delivered, Constraints())["request_rate"] < 0 and not delivered.warnings
    closed = summarize(TrialConfig(), LoadSpec(concurrency=4), windows, MeasureSettings())
    assert "request_rate" not in violations(closed, Constraints())
    # A backlog (slowest request 1.5 s): the last window's sends may still be in flight, so it is not counted.
    backlog = [_window(2400, 1500, latency_ms=1500), _window(2400, 1500, latency_ms=1500), _window(600, 600)]
    assert "cannot keep up" in (check_request_rate(load, backlog) or "")
    unknown = [WindowStats(duration_s=2.0, latencies_ms=[3.0] * 1000) for _ in range(3)]  # no send counts (fakes)
    assert "cannot keep up" in (check_request_rate(load, unknown) or "")


def test_perf_analyzer_stopping_on_its_own_is_the_configs_failure_only_when_the_server_failed_requests(
        tmp_path: Path) -> None:
    engine = PerfAnalyzerEngine.__new__(PerfAnalyzerEngine)
    engine._log = tmp_path / "perf_analyzer.log"
    engine._proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    engine._proc.wait()
    engine._log.write_text("Request concurrency: 4\nFailed to obtain stable measurement\nSegmentation fault\n")
    assert type(engine._exited()) is LoadToolError
    engine._log.write_text("Request concurrency: 4\nThread [0] had error: [request id: 7] model failed: boom\n")
    assert type(engine._exited()) is LoadGenerationError and "boom" in str(engine._exited())
