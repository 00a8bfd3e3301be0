"""Shared studies: many workers on one Optuna study (journal file and SQLite RDB with heartbeats), fake benches."""

from __future__ import annotations

import os
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.unit.test_search_loop import FakeBench, make_job
from tuner.errors import BadInput
from tuner.job import SearchSettings
from tuner.model_config import effective_key
from tuner.policy import Twins
from tuner.search import Search
from tuner.storage import HEARTBEAT_ATTR, Heartbeat, journal_path, mask_url, open_storage
from tuner.study import BUDGET_ATTR, EFFECTIVE_KEY_ATTR, QUEUED_ATTR, StudyStore

FAST = Heartbeat(interval_s=1, grace_s=2)


def storages(tmp_path) -> list[str]:
    return [f"journal://{tmp_path / 'study.journal'}", f"sqlite:///{tmp_path / 'shared.db'}"]


class SlowBench(FakeBench):
    """A fake bench that takes a little wall time, so two workers overlap."""

    def measure(self, config, number, screen=None):
        time.sleep(0.05)
        return super().measure(config, number, screen)


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_the_budget_and_never_measure_a_config_twice(tmp_path, kind):
    url = storages(tmp_path)[0 if kind == "journal" else 1]
    settings = SearchSettings(trials=8, storage=url, study="shared", heartbeat=FAST, poll_s=0.05)
    benches = [SlowBench(), SlowBench()]
    searches = [Search(make_job(tmp_path / f"w{i}"), settings) for i in range(2)]
    outcomes: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            outcomes[i] = searches[i].run(benches[i])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    measured = [c.key() for b in benches for _, c in b.calls]
    assert len(measured) == len(set(measured)) == 8  # the budget is the study's, not each worker's
    assert all(b.calls for b in benches)  # both contributed
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    assert study.user_attrs[BUDGET_ATTR] == 8
    assert [o.stop_reason for o in outcomes.values()] == ["study budget reached (8 configs measured by all workers)"] * 2
    for i in range(2):  # each worker's outputs cover every worker's trials
        records = sorted((tmp_path / f"w{i}" / "trials").glob("trial-*.json"))
        assert len(records) == 8
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_a_worker_with_other_settings_is_refused(tmp_path):
    url = storages(tmp_path)[0]
    StudyStore.open(make_job(tmp_path / "a"), SearchSettings(trials=4, storage=url, study="s"))
    other = make_job(tmp_path / "b", space="knobs:\n  instance_count: {type: int, low: 1, high: 2}\n")
    with pytest.raises(BadInput, match=r"^--study s: this worker's space differ"):
        StudyStore.open(other, SearchSettings(trials=4, storage=url, study="s"))


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_only_stale_trials_are_failed_and_queued_again(tmp_path, kind):
    url = storages(tmp_path)[0 if kind == "journal" else 1]
    store = StudyStore.open(make_job(tmp_path), SearchSettings(storage=url, study="s", heartbeat=FAST))
    study = store.study
    alive, dead = study.ask(), study.ask()
    for trial in (alive, dead):
        trial.suggest_int("instance_count", 1, 4)
    dead.set_user_attr(HEARTBEAT_ATTR, time.time() - 1)  # its worker beat once, then died
    with store.heartbeat(alive, FAST):  # its worker beats every second from a thread
        time.sleep(3.5)  # > grace 2 s
        assert store.fail_stale(FAST) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states[alive.number] == TrialState.RUNNING and states[dead.number] == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[QUEUED_ATTR] for t in waiting] == [dead.params]


def test_killed_worker_trial_is_retried_by_the_other(tmp_path):
    """A trial left RUNNING with a stale beat (its worker was killed) is measured by the next worker."""
    url = storages(tmp_path)[0]
    settings = SearchSettings(trials=3, storage=url, study="s", heartbeat=FAST, poll_s=0.05)
    study = StudyStore.open(make_job(tmp_path / "dead"), settings).study
    orphan = study.ask({"instance_count": optuna.distributions.IntDistribution(1, 4)})
    orphan.set_user_attr(HEARTBEAT_ATTR, time.time() - 60)
    bench = FakeBench()
    outcome = Search(make_job(tmp_path / "live"), settings).run(bench)
    assert study.get_trials()[orphan.number].state == TrialState.FAIL
    measured = [c.instance_count for _, c in bench.calls]
    assert orphan.params["instance_count"] in measured and len(outcome.results) == 3


def test_a_config_another_worker_is_measuring_is_waited_for_not_measured(tmp_path):
    url = storages(tmp_path)[0]
    settings = SearchSettings(trials=2, storage=url, study="s", heartbeat=FAST, poll_s=0.05)
    search = Search(make_job(tmp_path), settings)
    store = search.open()
    study, twins = store.study, Twins(store, search.job.base, settings.poll_s, settings.heartbeat)
    twin = study.ask()
    key = effective_key(search.job.base, search.job.space.for_model(True).sample(twin))
    twin.set_user_attr(EFFECTIVE_KEY_ATTR, key)
    twin.set_user_attr(HEARTBEAT_ATTR, time.time() + 3600)  # alive for the test's duration
    later = study.ask()
    assert twins.measured_by_any(twin, key) is None  # the earliest measures
    finisher = threading.Timer(0.3, lambda: study.tell(twin, 1.0) or None)
    finisher.start()
    started = time.monotonic()
    assert twins.measured_by_any(later, key) is None  # twin finished without a result record
    assert time.monotonic() - started >= 0.25  # ...and the later trial waited for it instead of measuring at once
    finisher.join()


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_twins_stamped_at_the_same_instant_agree_on_one_measurer_at_a_time(tmp_path, kind):
    """Four workers ask for the same config at once (stamp, then read, racing): at every moment at most one of them
    measures it; when that one's trial ends without a result the others re-decide and the next one measures."""
    url = storages(tmp_path)[0 if kind == "journal" else 1]
    settings = SearchSettings(trials=8, storage=url, study="s", heartbeat=FAST, poll_s=0.01)
    search = Search(make_job(tmp_path), settings)
    store = search.open()
    study, twins = store.study, Twins(store, search.job.base, settings.poll_s, settings.heartbeat)
    key = '{"the": "same config"}'
    for round_ in range(3):
        trials = [study.ask() for _ in range(4)]
        for t in trials:
            t.set_user_attr(HEARTBEAT_ATTR, time.time() + 3600)
        barrier, lock, measuring, spans = threading.Barrier(len(trials)), threading.Lock(), [], []

        def worker(trial, delay, barrier=barrier, lock=lock, measuring=measuring, spans=spans):  # this round's
            barrier.wait()
            time.sleep(delay)
            trial.set_user_attr(EFFECTIVE_KEY_ATTR, key)
            assert twins.measured_by_any(trial, key) is None  # nobody records a result here
            with lock:
                measuring.append(trial.number)
                overlap = len(measuring) > 1
            started = time.monotonic()
            time.sleep(0.1)
            with lock:
                measuring.remove(trial.number)
                spans.append((trial.number, started, overlap))
            study.tell(trial, 1.0)  # done, no result record: the next twin measures

        # round 0: the latest-numbered stamps first (a later trial reads before an earlier one has stamped); then mixed
        delays = [[0.03 * (len(trials) - i) for i in range(len(trials))], [0.0] * len(trials),
                  [0.02, 0.0, 0.04, 0.01]][round_]
        threads = [threading.Thread(target=worker, args=(t, d)) for t, d in zip(trials, delays, strict=True)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in threads), f"round {round_}: a twin waits forever"
        assert len(spans) == len(trials) and not any(overlap for _, _, overlap in spans), spans


def test_storage_urls_and_masking(tmp_path):
    assert mask_url("postgresql://greentune:s3cret@db:5432/greentune") == "postgresql://greentune:***@db:5432/greentune"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert journal_path("journal:///srv/study.log") == journal_path("journal:///srv/study.log")
    assert str(journal_path("journal:///srv/study.log")) == "/srv/study.log"
    with pytest.raises(BadInput, match="journal:///absolute"):
        journal_path("journal://relative.log")
    with pytest.raises(BadInput, match="does not exist"):
        open_storage(f"journal://{tmp_path}/missing/study.log")
    with pytest.raises(BadInput, match=r"^--study needs --storage"):
        SearchSettings(study="s")
    with pytest.raises(BadInput, match="--grace-period"):
        Heartbeat(interval_s=5, grace_s=5)


def test_report_and_export_from_the_study_alone(tmp_path):
    """A report and an export on another machine: nothing but --storage and --study (no worker's folder)."""
    from click.testing import CliRunner

    from tuner.cli import cli
    from tuner.outputs import summary_document

    url = storages(tmp_path)[0]
    settings = SearchSettings(trials=4, storage=url, study="s", heartbeat=FAST, poll_s=0.05)
    job = make_job(tmp_path / "worker")
    search = Search(job, settings)
    store = search.open()
    search.on_result = lambda outcome: store.save_summary(summary_document(job, outcome, None))
    outcome = search.run(FakeBench())
    runner = CliRunner()
    result = runner.invoke(cli, ["report", "--storage", url, "--study", "s", "-o", str(tmp_path / "elsewhere")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "elsewhere" / "report.html").read_text()
    assert all(f'data-v="{r.number}"' in html for r in outcome.results) and len(outcome.results) == 4
    import pandas as pd

    frame = pd.read_csv(tmp_path / "elsewhere" / "trials.csv")  # as search writes it: a pipeline reads the CSV
    assert list(frame["trial"]) == [r.number for r in outcome.results]
    assert list(frame["baseline"]) == [r.number == outcome.baseline.number for r in outcome.results]
    assert frame["inferences_per_j"].iloc[0] == pytest.approx(outcome.results[0].measurement.inferences_per_j.mean)
    best = outcome.best.number
    result = runner.invoke(cli, ["export", "--storage", url, "--study", "s", "-o", str(tmp_path / "elsewhere"),
                                 "--trial", str(best), "--no-verify"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "elsewhere" / "mlp" / f"trial-{best}" / "config.pbtxt").read_text()
    assert f"count: {outcome.best.config.instance_count}" in written
    unverified = runner.invoke(cli, ["export", "--storage", url, "--study", "s", "-o", str(tmp_path / "elsewhere"),
                                     "--trial", str(best)])  # --verify, no -r: the study's repository is not loaded
    assert unverified.exit_code == 2 and unverified.output.startswith("error: --verify: give --model-repository")
    missing = runner.invoke(cli, ["report", "--storage", url, "--study", "nope", "-o", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "--study nope: no such study" in missing.output and "s" in missing.output
    both = runner.invoke(cli, ["report", str(tmp_path), "--storage", url, "--study", "s"])
    assert both.exit_code == 2 and "together" in both.output


def test_worker_needs_storage_and_study_and_matching_settings(tmp_path):
    from click.testing import CliRunner

    from tests.conftest import MODEL_REPOSITORY
    from tuner.cli import cli

    result = CliRunner().invoke(cli, ["worker", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "worker needs --storage URL and --study NAME" in result.output


class GpuBench(FakeBench):
    def __init__(self, gpu: str, meters=("nvml",)) -> None:
        super().__init__()
        self.environment = {"gpu_models": gpu, "gpu_driver": "550.54", "cpu_model": "x"}
        self.meter_details = {m: {"name": m} for m in meters}


def test_every_trial_records_its_hardware_and_other_gpus_are_refused_unless_allowed(tmp_path):
    url = storages(tmp_path)[0]
    settings = SearchSettings(trials=2, storage=url, study="s", heartbeat=FAST, poll_s=0.05)
    Search(make_job(tmp_path / "h100"), settings).run(GpuBench("NVIDIA H100 80GB HBM3"))
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    measured = [t for t in study.get_trials() if "result" in t.user_attrs]
    assert {t.user_attrs["hardware"]["gpu_model"] for t in measured} == {"NVIDIA H100 80GB HBM3"}
    assert measured[0].user_attrs["hardware"]["gpu_driver"] == "550.54"
    assert measured[0].user_attrs["hardware"]["meters"] == ["nvml"]
    more = SearchSettings(trials=2, storage=url, study="s", heartbeat=FAST, poll_s=0.05)
    with pytest.raises(BadInput, match="this worker measures on GPU NVIDIA A100.*--allow-mixed-hardware"):
        Search(make_job(tmp_path / "a100"), more).run(GpuBench("NVIDIA A100-SXM4-40GB"))
    with pytest.raises(BadInput, match="meters estimate"):
        Search(make_job(tmp_path / "cpu"), more).run(GpuBench("NVIDIA H100 80GB HBM3", ("estimate",)))
    mixed = SearchSettings(trials=2, storage=url, study="s", heartbeat=FAST, poll_s=0.05, allow_mixed_hardware=True)
    Search(make_job(tmp_path / "a100"), mixed).run(GpuBench("NVIDIA A100-SXM4-40GB"))  # allowed: no error


def test_parallel_slots_one_per_gpu_one_trial_per_server_at_a_time(tmp_path, monkeypatch):
    """--gpus 0,1 --parallel 2: the plan, the scheduling (every trial once, one at a time per server), and each
    slot's meter reading its own GPU only (NVML fake)."""
    from tests.fakes.fake_nvml import FakeGpu, FakeNvml, h100_trace
    from tuner.meters import nvml as nvml_meter
    from tuner.meters.select import select_meters
    from tuner.parallel import plan_slots, run_slots, slot_job
    from tuner.server.base import Server
    from tuner.server.probes import ProcessTreeProbe

    slots, warning = plan_slots([0, 1], 2, gpu_count=4, output=tmp_path)
    assert [(s.gpu, s.output.name) for s in slots] == [(0, "gpu-0"), (1, "gpu-1")] and warning is None
    with pytest.raises(BadInput, match="^--parallel 3: expected one server per GPU, i.e. 2"):
        plan_slots([0, 1], 3, gpu_count=4, output=tmp_path)
    with pytest.raises(BadInput, match="GPU 7 does not exist"):
        plan_slots([0, 7], 2, gpu_count=4, output=tmp_path)
    cpu_slots, cpu_warning = plan_slots(None, 2, gpu_count=0, output=tmp_path)
    assert [s.gpu for s in cpu_slots] == [None, None] and "compete for the same cores" in cpu_warning

    fake = FakeNvml([FakeGpu(h100_trace()), FakeGpu(h100_trace(idle_w=90.0))])
    monkeypatch.setattr(nvml_meter, "nvml_module", lambda: fake)
    server = Server(grpc_url="h:1", http_url="http://h:0", metrics_url=None, probe=ProcessTreeProbe(os.getpid()))
    job = make_job(tmp_path)
    for slot in slots:
        choice = slot_job(job, slot)
        meters = select_meters(server, "auto", gpus=choice.gpus, powercap_root=tmp_path / "none")
        assert [g.index for g in meters[0].gpus] == [slot.gpu]  # its own GPU's NVML meter only
        for m in meters:
            m.close()

    busy = [threading.Lock(), threading.Lock()]

    class SlotBench(SlowBench):
        def __init__(self, i):
            super().__init__()
            self.i = i
            self.idle_power_w = {"nvml": 100.0 + i}

        def measure(self, config, number, screen=None):
            assert busy[self.i].acquire(blocking=False), "two trials at once on one server"
            try:
                return super().measure(config, number, screen)
            finally:
                busy[self.i].release()

    settings = SearchSettings(trials=6, storage=f"journal://{tmp_path / 'p.journal'}", study="greentune-mlp",
                              heartbeat=FAST, poll_s=0.05)
    benches = [SlotBench(0), SlotBench(1)]
    outcome = run_slots(job, settings, slots, benches)
    keys = [c.key() for b in benches for _, c in b.calls]
    assert len(keys) == len(set(keys)) == 6 and all(b.calls for b in benches)
    assert len(outcome.results) == 6
    assert outcome.idle_power_w == {"nvml@slot0": 100.0, "nvml@slot1": 101.0}  # idle baseline per GPU


def test_a_worker_with_other_settings_is_refused_by_the_cli_before_any_server(tmp_path):
    from click.testing import CliRunner

    from tests.conftest import MODEL_REPOSITORY
    from tuner.cli import cli

    url = storages(tmp_path)[0]
    args = ["worker", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu", "--storage", url, "--study", "s",
            "--launcher", "remote", "--url", "http://127.0.0.1:9", "--ready-timeout", "1"]  # nothing listens there: no server is needed
    first = CliRunner().invoke(cli, [*args, "--objective", "throughput", "-o", str(tmp_path / "a")])
    assert first.exit_code != 2  # created the study, then failed to reach the (absent) server
    other = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b")])
    assert other.exit_code == 2
    assert "--study s: this worker's objective differ from the study's (objective=throughput)" in other.output
    assert "\n" not in other.output.strip()  # one line
