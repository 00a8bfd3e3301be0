"""Shared studies that never hang and never crash a live worker (issue 21, item 2), on real journal and SQLite
storage: a trial whose worker died before its first beat is failed as stale on every storage; a live worker whose
trial was failed as stale keeps its measurement; every worker uses the study's heartbeat settings; two workers that
create one study at once with different settings cannot both go on."""

from __future__ import annotations

import time

import pytest
from optuna.trial import TrialState

from tuner.errors import BadInput
from tuner.job import SearchSettings
from tuner.model_config import effective_key
from tuner.policy import SharedPolicy, Twins
from tuner.results import Hardware, TrialConfig, TrialResult
from tuner.storage import Heartbeat
from tuner.study import SETTINGS_ATTR, StudyStore, check_settings

from .test_search_loop import fake_measurement, make_job

SPACE = "knobs:\n  instance_count: {type: int, low: 1, high: 4}\n"
FAST = Heartbeat(interval_s=1, grace_s=2)


def url_of(tmp_path, kind: str) -> str:
    return f"journal://{tmp_path / 's.journal'}" if kind == "journal" else f"sqlite:///{tmp_path / 's.db'}"


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_whose_worker_died_before_its_first_beat_is_failed_as_stale(tmp_path, kind):
    """Asked, then killed before the heartbeat thread ran: no beat at all. Optuna's RDB heartbeat never failed such a
    trial, so every worker waited for it forever at the end of the budget."""
    store = StudyStore.open(make_job(tmp_path, SPACE), SearchSettings(storage=url_of(tmp_path, kind), study="s",
                                                                      heartbeat=FAST))
    orphan = store.ask()
    orphan.suggest_int("instance_count", 1, 4)
    assert store.fail_stale(FAST) == 0  # just started: within the grace period
    assert store.fail_stale(FAST, now=time.time() + 60) == 1  # a minute later, still silent
    assert store.study.get_trials()[orphan.number].state == TrialState.FAIL
    assert len(store.trials(TrialState.WAITING)) == 1  # queued again for another worker


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_live_worker_whose_trial_was_failed_as_stale_keeps_its_measurement(tmp_path, kind):
    job = make_job(tmp_path, SPACE)
    settings = SearchSettings(storage=url_of(tmp_path, kind), study="s", heartbeat=FAST, poll_s=0.01)
    store = StudyStore.open(job, settings)
    trial = store.ask()
    config = TrialConfig(instance_count=trial.suggest_int("instance_count", 1, 4))
    store.fail_stale(FAST, now=time.time() + 60)  # another worker, its clock a minute ahead, failed it
    m = fake_measurement(config, 42.0)
    store.record(trial, TrialResult(trial.number, config, m))  # used to die in tell: UpdateFinishedTrialError
    results, _ = store.results()
    assert [(r.number, r.measurement.inferences_per_j.mean) for r in results] == [(trial.number, pytest.approx(42.0))]
    assert (tmp_path / "trials" / f"trial-{trial.number:04d}.json").is_file()
    retried = store.ask()  # the requeued copy: whoever asks it reuses the kept result instead of measuring again
    key = effective_key(job.base, job.space.for_model(True).sample(retried))
    assert retried.params == trial.params
    assert Twins(store, job.base, 0.01, FAST).measured_by_any(retried, key).number == trial.number


def test_every_worker_uses_the_heartbeat_settings_the_study_was_created_with(tmp_path):
    url = url_of(tmp_path, "journal")
    StudyStore.open(make_job(tmp_path / "a", SPACE), SearchSettings(storage=url, study="s", heartbeat=FAST))
    slow = SearchSettings(storage=url, study="s", heartbeat=Heartbeat(interval_s=20, grace_s=60))
    store = StudyStore.open(make_job(tmp_path / "b", SPACE), slow)
    assert store.heartbeat_settings(slow.heartbeat) == FAST
    job = make_job(tmp_path / "b", SPACE)
    assert SharedPolicy(store, slow, job.base, job.objective, Hardware(), time.monotonic).heartbeat == FAST


class Racing:
    """A study that another worker creates at the same moment: its settings land right after ours."""

    def __init__(self, study, theirs: dict) -> None:
        self.study, self.theirs = study, theirs

    @property
    def user_attrs(self) -> dict:
        return self.study.user_attrs

    def set_user_attr(self, key: str, value: object) -> None:
        self.study.set_user_attr(key, value)
        if key == SETTINGS_ATTR:
            self.study.set_user_attr(key, self.theirs)


def test_two_workers_creating_one_study_with_different_settings_cannot_both_go_on(tmp_path):
    store = StudyStore.open(make_job(tmp_path, SPACE), SearchSettings(trials=4))
    store.study.set_user_attr(SETTINGS_ATTR, None)  # as if just created: nothing recorded yet
    mine = {"model": "mlp", "objective": "efficiency", "window_s": 2.0}
    theirs = {**mine, "window_s": 5.0}
    with pytest.raises(BadInput, match=r"^--study s: this worker's window_s differ from the study's \(window_s=5.0\)"):
        check_settings(Racing(store.study, theirs), mine, "--study s: this worker's", "differ from the study's",
                       "", {})


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_trial_another_worker_already_completed_keeps_this_workers_measurement_too(tmp_path, kind):
    """On SQLite, which has no row lock, two workers could both take one queued trial; the second tell then raised
    Optuna's ValueError 'Cannot tell a COMPLETE trial.' and killed a live worker with its measurement."""
    job = make_job(tmp_path, SPACE)
    store = StudyStore.open(job, SearchSettings(storage=url_of(tmp_path, kind), study="s", heartbeat=FAST))
    trial = store.ask()
    config = TrialConfig(instance_count=trial.suggest_int("instance_count", 1, 4))
    first = StudyStore.open(job, SearchSettings(storage=url_of(tmp_path, kind), study="s", heartbeat=FAST))
    tell = store._tell

    def completed_meanwhile(number, state, value=None):  # the first worker tells between our attributes and tell
        first.study.tell(trial.number, 40.0)
        store._tell = tell
        tell(number, state, value)

    store._tell = completed_meanwhile
    store.record(trial, TrialResult(trial.number, config, fake_measurement(config, 44.0)))  # kept once, not lost
    kept = sorted(r.measurement.inferences_per_j.mean for r in store.results()[0])
    assert kept == [pytest.approx(44.0)]
