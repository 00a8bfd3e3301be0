"""Where a study lives: an RDB URL (SQLite, PostgreSQL, MySQL) or journal:///path/file; heartbeats for shared studies.

A shared study (`--study NAME`) is worked on by many processes at once, Optuna's own distributed model:
- RDBStorage with `heartbeat_interval` / `grace_period` and `RetryHeartbeatStaleTrialCallback`: a worker that dies
  stops beating, `optuna.storages.fail_stale_trials` fails its trial after the grace period and the callback queues
  it again, so another worker measures it.
- JournalStorage (file backend) has no heartbeat in Optuna, so its trials carry a `heartbeat_at` user attribute
  (seconds since the epoch) refreshed by the same thread; a RUNNING trial whose beat is older than the grace period
  is failed and queued again (`tuner.study.fail_stale`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage

from tuner.errors import BadInput
from tuner.redact import mask_url, redact

JOURNAL_SCHEME = "journal://"
HEARTBEAT_ATTR = "heartbeat_at"  # journal storage only: the worker's last beat, seconds since the epoch


@dataclass(frozen=True)
class Heartbeat:
    """How often a worker proves it is alive, and how long silence means it is dead (both in seconds)."""

    interval_s: int = 10
    grace_s: int = 30

    def __post_init__(self) -> None:
        if self.interval_s < 1:
            raise BadInput(f"--heartbeat-interval: expected at least 1 second, got {self.interval_s}")
        if self.grace_s <= self.interval_s:
            raise BadInput(f"--grace-period: expected more than --heartbeat-interval ({self.interval_s} s), "
                           f"got {self.grace_s}")


def journal_path(url: str) -> Path | None:
    """journal:///path/file -> /path/file; None for any other URL."""
    if not url.startswith(JOURNAL_SCHEME):
        return None
    path = url[len(JOURNAL_SCHEME):]
    if not path.startswith("/"):
        raise BadInput(f"--storage {mask_url(url)}: expected journal:///absolute/path/to/file")
    return Path(path)


def open_storage(url: str, heartbeat: Heartbeat | None = None) -> BaseStorage:
    """The storage for url; with heartbeat, RDB trials of dead workers are failed and retried."""
    path = journal_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise BadInput(f"--storage {url}: folder {path.parent} does not exist")
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(3):
        try:
            with quiet():
                kwargs: dict[str, Any] = {}
                if heartbeat is not None:
                    kwargs = {"heartbeat_interval": heartbeat.interval_s, "grace_period": heartbeat.grace_s,
                              "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback()}
                return RDBStorage(url, **kwargs)
        except Exception as exc:  # sqlalchemy errors name the URL's problem
            if "already exists" in str(exc) and attempt < 2:  # two workers created the tables at once
                time.sleep(0.5)
                continue
            raise BadInput(f"--storage {mask_url(url)}: cannot open ({redact(str(exc).splitlines()[0])})") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Optuna's notes that heartbeats are experimental and meant for Study.optimize (greentune asks and tells,
    and beats itself): not for the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


@contextlib.contextmanager
def beating(storage: BaseStorage, trial: optuna.Trial, heartbeat: Heartbeat | None) -> Iterator[None]:
    """While the block runs, record the trial's heartbeat every interval (nothing without a heartbeat)."""
    if heartbeat is None:
        yield
        return
    stop = threading.Event()
    # The trial's storage id through the storage's public API (not the private trial._trial_id).
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(trial.study.study_name), trial.number)

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period covers a few
                if isinstance(storage, RDBStorage):
                    storage.record_heartbeat(trial_id)
                else:
                    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
            if stop.wait(heartbeat.interval_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
