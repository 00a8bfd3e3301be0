"""The bench on a stand-in server: every request carries --request-timeout (auto, repeats), and a dead server is
restarted and reported as a failed trial. gRPC is replaced at the client; the window loop and the bench are real."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
import yaml

from tests.conftest import MODEL_REPOSITORY
from tuner import events
from tuner.bench import MAX_SERVER_RESTARTS, Bench, LoadPolicy
from tuner.errors import ServerError
from tuner.load import LoadSpec
from tuner.measure import InputSource, MeasureSettings
from tuner.model_config import load_model_config
from tuner.objective import Constraints
from tuner.results import TrialConfig
from tuner.server.base import Server
from tuner.space import parse_space
from tuner.study import Search, SearchJob, SearchSettings

BASE = load_model_config(MODEL_REPOSITORY, "mlp")
QUICK = MeasureSettings(warmup_s=0.02, window_s=0.05, max_windows=3, stability_tolerance=0.9, idle_s=0)
TIMEOUT_S = 0.7


class FakeServer:
    """The server side of the stand-in: alive until told otherwise, and every request's client timeout."""

    def __init__(self, die_after_requests: int | None = None) -> None:
        self.alive = True
        self.timeouts: list[float | None] = []
        self.die_after_requests = die_after_requests
        self.in_flight = 0


class FakeLauncher:
    """Starts a fresh FakeServer each time (a launcher at the process boundary, nothing else faked)."""

    name = "fake"

    def __init__(self, die_after_requests: int | None = None) -> None:
        self.servers: list[FakeServer] = []
        self.die_after_requests = die_after_requests

    @contextlib.contextmanager
    def start(self, model_repository, output_dir):
        state = FakeServer(self.die_after_requests)
        self.servers.append(state)
        yield Server(grpc_url="127.0.0.1:1", http_url="http://127.0.0.1:1", metrics_url=None, kind="fake",
                     alive=lambda: state.alive)


@pytest.fixture
def launcher(monkeypatch):
    fake = FakeLauncher()

    class Client:
        """tritonclient.grpc.aio.InferenceServerClient's surface the load generator uses."""

        def __init__(self, url: str) -> None:
            self.state = fake.servers[-1]

        async def infer(self, model, inputs, client_timeout=None):
            state = self.state
            state.timeouts.append(client_timeout)
            if state.die_after_requests is not None and len(state.timeouts) >= state.die_after_requests:
                state.alive = False
            state.in_flight += 1
            try:  # latency grows with load, so throughput saturates and auto settles
                await asyncio.sleep(0.002 * state.in_flight)
            finally:
                state.in_flight -= 1

        async def close(self) -> None:
            pass

    monkeypatch.setattr("tritonclient.grpc.aio.InferenceServerClient", Client)
    monkeypatch.setattr("tuner.server.control.load_config", lambda server, model, config, timeout_s=300.0: None)
    monkeypatch.setattr("tuner.server.control.server_version", lambda server: "fake")
    monkeypatch.setattr(InputSource, "samples",
                        lambda self, server, model: [{"INPUT": np.zeros((1, 256), dtype=np.float32)}])
    return fake


def make_bench(launcher, tmp_path, load: LoadPolicy, progress=None) -> Bench:
    return Bench(launcher, MODEL_REPOSITORY, "mlp", BASE, tmp_path, InputSource({}), load, QUICK, Constraints(),
                 progress=progress)


def test_request_timeout_reaches_every_request_under_concurrency_auto(launcher, tmp_path):
    with make_bench(launcher, tmp_path, LoadPolicy.auto(1000.0, LoadSpec(concurrency=1, request_timeout_s=TIMEOUT_S))) as bench:
        result = bench.measure(TrialConfig(instance_count=2), 1)
        again = bench.remeasure(result)
    assert not result.failed and not again.failed, result.failure_reason
    assert result.measurement.load["mode"] == "auto"
    timeouts = launcher.servers[0].timeouts
    assert len(timeouts) > 50 and set(timeouts) == {TIMEOUT_S}  # probes, measurement and the repeat alike


def test_request_timeout_reaches_every_request_of_a_search_with_repeats(launcher, tmp_path):
    for load in (LoadPolicy.auto(1000.0, LoadSpec(concurrency=1, request_timeout_s=TIMEOUT_S)), LoadPolicy(LoadSpec(concurrency=2, request_timeout_s=TIMEOUT_S))):
        out = tmp_path / load.describe()["mode"]
        space = parse_space(yaml.safe_load("knobs:\n  instance_count: {type: int, low: 1, high: 3}\n"), "s.yaml")
        job = SearchJob(MODEL_REPOSITORY, "mlp", BASE, space, Constraints(), load, InputSource({}), QUICK, out)
        seen: list[events.Event] = []
        with make_bench(launcher, out, load) as bench:
            outcome = Search(job, SearchSettings(trials=2, repeats=2), seen.append).run(bench)
        assert len(outcome.repeated) == 2 and all(r.measurement.repeats == 2 for r in outcome.results)
        assert sum(isinstance(e, events.RepeatStarted) for e in seen) == 2
        timeouts = launcher.servers[-1].timeouts
        assert len(timeouts) > 50 and set(timeouts) == {TIMEOUT_S}


def test_a_server_that_dies_fails_its_trial_and_the_next_trial_gets_a_fresh_server(launcher, tmp_path):
    seen: list[events.Event] = []
    launcher.die_after_requests = 20
    with make_bench(launcher, tmp_path, LoadPolicy(LoadSpec(concurrency=2)), seen.append) as bench:
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
    with make_bench(launcher, tmp_path, LoadPolicy(LoadSpec(concurrency=1))) as bench:
        for number in range(MAX_SERVER_RESTARTS + 1):
            assert bench.measure(TrialConfig(), number).failed
        with pytest.raises(ServerError, match=f"died {MAX_SERVER_RESTARTS + 1} times"):
            bench.measure(TrialConfig(), 99)
    assert len(launcher.servers) == MAX_SERVER_RESTARTS + 1
