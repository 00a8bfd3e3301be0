"""Ctrl-C during `search --parallel` stops everything: every slot stops asking once one slot fails or the main thread
is interrupted, the slots are joined before any bench closes, a closing bench never restarts a server, and
perf_analyzer (in a session of its own) is killed when a second Ctrl-C lands while it writes its export."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_bench import BASE, LOAD, QUICK, FakeLauncher
from tests.unit.test_search_loop import FakeBench, make_job
from tests.unit.test_shared_study import FAST
from tuner.bench import Bench, LoadPolicy
from tuner.engines.perf_analyzer import PerfAnalyzerEngine
from tuner.errors import ServerError
from tuner.job import SearchJob, SearchSettings
from tuner.measure import InputSource
from tuner.objective import Constraints
from tuner.parallel import Slot, run_slots
from tuner.results import TrialConfig
from tuner.search_run import run_parallel_search
from tuner.study import StudyStore

SETTLE_S = 0.3  # how long the test's slots linger after the interrupt: far longer than setting the stop takes


class Interrupt:
    """Two slots caught mid-trial at once: slot 1 measures until slot 0 interrupts, then lingers a little;
    every ask of the study is logged with whether the interrupt had happened yet."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.measuring = threading.Event()  # slot 1 is inside its measurement
        self.interrupted = threading.Event()  # set just before the interrupt is raised or sent
        self.asks: list[tuple[str, bool]] = []
        real_ask = StudyStore.ask

        def ask(store: StudyStore):
            self.asks.append((threading.current_thread().name, self.interrupted.is_set()))
            return real_ask(store)

        monkeypatch.setattr(StudyStore, "ask", ask)

    def asks_after(self) -> list[str]:
        """The slots that asked for a trial after the interrupt."""
        return [name for name, late in self.asks if late]


class SlotBench(FakeBench):
    """Slot 0's first trial waits until slot 1 measures (or 10 s, should slot 1 wait on it as a twin), then runs
    `action` (the interrupt) once; slot 1 measures until then and lingers SETTLE_S."""

    def __init__(self, index: int, interrupt: Interrupt, action) -> None:
        super().__init__()
        self.index, self.interrupt, self.action = index, interrupt, action

    def measure(self, config, number, screen=None):
        if self.index == 0 and not self.interrupt.interrupted.is_set():
            self.interrupt.measuring.wait(10)
            self.interrupt.interrupted.set()
            self.action()
        elif self.index == 1:
            self.interrupt.measuring.set()
            self.interrupt.interrupted.wait(10)
        time.sleep(SETTLE_S)
        return super().measure(config, number, screen)


def slots_of(tmp_path: Path) -> list[Slot]:
    return [Slot(0, None, tmp_path / "cpu-0"), Slot(1, None, tmp_path / "cpu-1")]


def shared(tmp_path: Path) -> SearchSettings:
    return SearchSettings(trials=8, storage=f"journal://{tmp_path / 'p.journal'}", study="greentune-mlp",
                          heartbeat=FAST, poll_s=0.05)


def slot_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("slot-")]


def join_slot_threads() -> None:
    """The old code returned with its slots still running: wait for them so the next test starts clean."""
    for thread in slot_threads():
        thread.join(60)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def test_a_slot_that_fails_stops_every_slot_before_its_next_trial_and_run_slots_raises_after_joining(
        tmp_path, monkeypatch):
    interrupt = Interrupt(monkeypatch)
    benches = [SlotBench(i, interrupt, raise_keyboard_interrupt) for i in range(2)]
    try:
        with pytest.raises(KeyboardInterrupt):  # the slot's own error, not the others' "stopped"
            run_slots(make_job(tmp_path), shared(tmp_path), slots_of(tmp_path), benches)
        running_at_raise = slot_threads()
    finally:
        join_slot_threads()
    assert not running_at_raise  # every slot ended before the error reached the caller
    assert interrupt.asks_after() == []  # slot 1 finished its trial in hand and asked for no other
    assert len(benches[1].calls) == 1


def test_ctrl_c_in_the_main_thread_stops_every_slot_and_joins_them_before_any_bench_closes(tmp_path, monkeypatch):
    interrupt = Interrupt(monkeypatch)
    main = threading.main_thread().ident
    assert main is not None and threading.current_thread() is threading.main_thread()
    # A real SIGINT to the main thread, which is waiting on the slots (a slot's thread never gets KeyboardInterrupt).
    benches = [SlotBench(i, interrupt, lambda: signal.pthread_kill(main, signal.SIGINT)) for i in range(2)]
    alive_at_close: list[list[str]] = []

    @contextlib.contextmanager
    def bench(job: SearchJob, launcher: object, progress: object = None):
        try:
            yield benches[0 if job.output.name == "cpu-0" else 1]
        finally:  # where the real bench stops its server
            alive_at_close.append([t.name for t in slot_threads()])

    monkeypatch.setattr(SearchJob, "bench", bench)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_parallel_search(make_job(tmp_path), shared(tmp_path), slots_of(tmp_path), [None, None])
    finally:
        join_slot_threads()
    assert alive_at_close == [[], []]  # both benches closed only after every slot had ended
    assert interrupt.asks_after() == []
    assert [len(b.calls) for b in benches] == [1, 1]  # each slot's trial in hand was finished, none started after


class StoppingLauncher(FakeLauncher):
    """The stand-in server of test_bench.py, dead once its context closes (as a stopped tritonserver is)."""

    @contextlib.contextmanager
    def start(self, model_repository, output_dir):
        with super().start(model_repository, output_dir) as server:
            try:
                yield server
            finally:
                self.servers[-1].alive = False


def test_a_closing_bench_never_restarts_a_dead_server(tmp_path, monkeypatch):
    monkeypatch.setattr("tuner.server.control.load_config", lambda server, model, config, timeout_s=300.0: None)
    monkeypatch.setattr("tuner.server.control.server_version", lambda server: "fake")
    monkeypatch.setattr(InputSource, "samples",
                        lambda self, server, model: [{"INPUT": np.zeros((1, 256), dtype=np.float32)}])
    launcher = StoppingLauncher()
    bench = Bench(launcher, tmp_path, "mlp", BASE, tmp_path, InputSource({}), LoadPolicy(LOAD), QUICK, Constraints())
    try:
        with bench:
            assert not bench.measure(TrialConfig(instance_count=2), 1).failed
        # The main thread closed the bench (its server is dead now); a --parallel slot still running asks again.
        with pytest.raises(ServerError, match="closing"):
            bench.measure(TrialConfig(instance_count=3), 2)
    finally:
        bench._server_stack.close()  # the old code's restarted server, so it does not outlive the test
    assert len(launcher.servers) == 1 and bench.server_restarts == 0


def process_gone(pid: int) -> bool:
    """True once pid is gone or a zombie (killed, not reaped: its parent is not this process)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_perf_analyzer_is_killed_with_its_group_when_ctrl_c_lands_while_it_writes_its_export(tmp_path):
    # Like perf_analyzer writing its export: SIGINT ignored, busy for a minute, in its own session as the engine
    # starts it, with a child of its own in its process group.
    script = ("import signal, subprocess, sys, time\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import signal, time\\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\\ntime.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "end = time.time() + 60\n"
              "while time.time() < end: pass\n")
    engine = PerfAnalyzerEngine.__new__(PerfAnalyzerEngine)
    engine._dir = tmp_path / "greentune-pa-test"
    engine._dir.mkdir()
    engine._export, engine._log = engine._dir / "export.json", engine._dir / "perf_analyzer.log"
    engine._stopped, engine._request_timeout_s = False, 30.0
    engine._proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
    assert engine._proc.stdout is not None
    child = int(engine._proc.stdout.readline())
    main = threading.main_thread().ident
    assert main is not None
    second_ctrl_c = threading.Timer(0.5, lambda: signal.pthread_kill(main, signal.SIGINT))
    try:
        second_ctrl_c.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            engine.stop()  # SIGINT, then waiting for the export: the second Ctrl-C lands here
        assert time.monotonic() - started < 10
        assert engine._proc.poll() is not None  # killed and reaped, not left running in its session
        deadline = time.monotonic() + 5
        while not process_gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(child)  # its whole process group went with it
        assert not engine._dir.exists()
    finally:
        second_ctrl_c.cancel()
        for pid in (engine._proc.pid, child):  # the old code leaves both running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        engine._proc.wait()
