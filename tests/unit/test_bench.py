"""The bench on a stand-in server: every request carries --request-timeout (auto, repeats), and a dead server is
restarted and reported as a failed trial. The stand-in is a real gRPC server in this process speaking Triton's
inference protocol (the load engine's worker processes reach it over loopback, with their deadlines); the window loop
and the bench are real."""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent import futures
from dataclasses import replace

import grpc
import numpy as np
import pytest
import yaml
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import MODEL_REPOSITORY
from tuner import events
from tuner.bench import MAX_SERVER_RESTARTS, Bench, LoadPolicy
from tuner.errors import ServerError
from tuner.job import SearchJob, SearchSettings
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings
from tuner.model_config import load_model_config
from tuner.objective import Constraints
from tuner.results import TrialConfig
from tuner.search import Search
from tuner.server.base import Server
from tuner.space import parse_space

BASE = load_model_config(MODEL_REPOSITORY, "mlp")
QUICK = MeasureSettings(warmup_s=0.05, window_s=0.3, max_windows=3, stability_tolerance=0.9, idle_s=0)
TIMEOUT_S = 7.0  # far from the 30 s default, and long enough to read back on the server under load
LOAD = LoadSpec(concurrency=2, request_timeout_s=TIMEOUT_S, engine="builtin")


class FakeServer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The server side of the stand-in: alive until told otherwise; records every request's remaining deadline."""

    def __init__(self, die_after_requests: int | None = None) -> None:
        self.alive = True
        self.timeouts: list[float | None] = []
        self.die_after_requests = die_after_requests
        self.in_flight = 0
        self.lock = threading.Lock()

    def ModelInfer(self, request, context):  # noqa: N802 (the gRPC method's name)
        with self.lock:
            self.timeouts.append(context.time_remaining())
            if self.die_after_requests is not None and len(self.timeouts) >= self.die_after_requests:
                self.alive = False
            self.in_flight += 1
            in_flight = self.in_flight
        try:  # latency grows with load, so throughput saturates and auto settles
            time.sleep(0.002 * in_flight)
        finally:
            with self.lock:
                self.in_flight -= 1
        return service_pb2.ModelInferResponse(model_name=request.model_name, id=request.id)


class FakeLauncher:
    """Starts a fresh FakeServer (a gRPC server on a free loopback port) each time: nothing else is faked."""

    name = "fake"

    def __init__(self, die_after_requests: int | None = None) -> None:
        self.servers: list[FakeServer] = []
        self.die_after_requests = die_after_requests

    @contextlib.contextmanager
    def start(self, model_repository, output_dir):
        state = FakeServer(self.die_after_requests)
        self.servers.append(state)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(state, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield Server(grpc_url=f"127.0.0.1:{port}", http_url="http://127.0.0.1:1", metrics_url=None, kind="fake",
                         alive=lambda: state.alive)
        finally:
            server.stop(grace=None)


def deadlines_are_the_request_timeout(timeouts: list[float | None]) -> bool:
    """Every request arrived with a deadline of --request-timeout (less the time it spent on the way)."""
    return all(t is not None and TIMEOUT_S - 2.0 < t < TIMEOUT_S + 0.5 for t in timeouts)  # ms rounding either way


@pytest.fixture
def launcher(monkeypatch):
    fake = FakeLauncher()
    monkeypatch.setattr("tuner.server.control.load_config", lambda server, model, config, timeout_s=300.0: None)
    monkeypatch.setattr("tuner.server.control.server_version", lambda server: "fake")
    monkeypatch.setattr(InputSource, "samples",
                        lambda self, server, model: [{"INPUT": np.zeros((1, 256), dtype=np.float32)}])
    return fake


def make_bench(launcher, tmp_path, load: LoadPolicy, progress=None) -> Bench:
    return Bench(launcher, MODEL_REPOSITORY, "mlp", BASE, tmp_path, InputSource({}), load, QUICK, Constraints(),
                 progress=progress)


def test_request_timeout_reaches_every_request_under_concurrency_auto(launcher, tmp_path):
    with make_bench(launcher, tmp_path, LoadPolicy.auto(1000.0, LOAD)) as bench:
        result = bench.measure(TrialConfig(instance_count=2), 1)
        again = bench.remeasure(result)
    assert not result.failed and not again.failed, result.failure_reason
    assert result.measurement.load["mode"] == "auto"
    timeouts = launcher.servers[0].timeouts
    assert len(timeouts) > 50 and deadlines_are_the_request_timeout(timeouts)  # probes, measurement, the repeat


def test_request_timeout_reaches_every_request_of_a_search_with_repeats(launcher, tmp_path):
    for load in (LoadPolicy.auto(1000.0, LOAD), LoadPolicy(LOAD)):
        out = tmp_path / load.describe()["mode"]
        space = parse_space(yaml.safe_load("knobs:\n  instance_count: {type: int, low: 1, high: 3}\n"), "s.yaml")
        job = SearchJob(MODEL_REPOSITORY, "mlp", BASE, space, Constraints(), load, InputSource({}), QUICK, out)
        seen: list[events.Event] = []
        with make_bench(launcher, out, load) as bench:
            outcome = Search(job, SearchSettings(trials=2, repeats=2), seen.append).run(bench)
        assert len(outcome.repeated) == 2 and all(r.measurement.repeats == 2 for r in outcome.results)
        assert sum(isinstance(e, events.RepeatStarted) for e in seen) == 2
        timeouts = launcher.servers[-1].timeouts
        assert len(timeouts) > 50 and deadlines_are_the_request_timeout(timeouts)


def test_a_server_that_dies_fails_its_trial_and_the_next_trial_gets_a_fresh_server(launcher, tmp_path):
    seen: list[events.Event] = []
    launcher.die_after_requests = 20
    with make_bench(launcher, tmp_path, LoadPolicy(LOAD), seen.append) as bench:
        died = bench.measure(TrialConfig(instance_count=2), 1)
        launcher.die_after_requests = None
        survived = bench.measure(TrialConfig(instance_count=3), 2)
    assert died.failed and died.failure_reason.startswith("server died")
    assert died.violations["failed"] > 0
    assert not survived.failed
    assert len(launcher.servers) == 2 and bench.server_restarts == 1
    assert events.ServerRestarted(1) in seen


def test_a_server_that_keeps_dying_stops_the_bench(launcher, tmp_path):
    launcher.die_after_requests = 1
    with make_bench(launcher, tmp_path, LoadPolicy(replace(LOAD, concurrency=1))) as bench:
        for number in range(MAX_SERVER_RESTARTS + 1):
            assert bench.measure(TrialConfig(), number).failed
        with pytest.raises(ServerError, match=f"died {MAX_SERVER_RESTARTS + 1} times"):
            bench.measure(TrialConfig(), 99)
    assert len(launcher.servers) == MAX_SERVER_RESTARTS + 1


def test_a_screen_sees_every_window_and_its_reason_stops_the_load_with_the_windows_so_far(launcher, tmp_path):
    seen: list[tuple] = []

    def screen(windows):
        seen.append(tuple(windows))
        return "clearly worse (test)" if len(windows) == 2 else None

    with make_bench(launcher, tmp_path, LoadPolicy(LOAD)) as bench:
        screened = bench.measure(TrialConfig(instance_count=2), 1, screen=screen)
        full = bench.measure(TrialConfig(instance_count=3), 2, screen=lambda windows: None)
    assert not screened.failed, screened.failure_reason
    assert screened.screened and not screened.feasible
    assert screened.measurement.screened_reason == "after 2 windows: clearly worse (test)"
    assert len(screened.measurement.windows) == 2 and len(seen) == 2  # stopped there, not at --max-windows
    first = seen[0][0]
    assert first.index == 1 and first.concurrency == LOAD.concurrency and first.inferences > 0
    assert first.p99_ms > 0 and first.energy_j is None  # the built-in engine reports live; no meter here
    assert not full.screened and full.measurement.screened_reason is None


def test_the_load_tool_failing_is_the_tools_failure_and_a_refused_config_the_configs(launcher, tmp_path, monkeypatch):
    from tuner.errors import LoadGenerationError, LoadToolError

    def failing(error):
        def measure_trial(context, config, spec, screen=None):
            raise error
        return measure_trial

    with make_bench(launcher, tmp_path, LoadPolicy(LOAD)) as bench:
        monkeypatch.setattr("tuner.bench.measure_trial", failing(LoadToolError("perf_analyzer stalled")))
        tool = bench.measure(TrialConfig(instance_count=2), 1)
        monkeypatch.setattr("tuner.bench.measure_trial", failing(LoadGenerationError("9 of 10 requests failed")))
        config = bench.measure(TrialConfig(instance_count=2), 2)
    assert tool.failed and tool.failure_kind == "tool" and tool.failure_reason == "load tool failed: perf_analyzer stalled"
    assert config.failed and config.failure_kind == "config" and config.failure_reason == "9 of 10 requests failed"
