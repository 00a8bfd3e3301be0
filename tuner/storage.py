"""Where a study lives: an RDB URL (SQLite, PostgreSQL, MySQL) or journal:///path/file; heartbeats for shared studies.

A shared study (`--study NAME`) is worked on by many processes at once, Optuna's own distributed model. Each running
trial carries a `heartbeat_at` user attribute (seconds since the epoch) that its worker refreshes every interval
from a thread; a RUNNING trial whose beat is older than the grace period is failed and queued again
(`StudyStore.fail_stale`), so another worker measures it. One mechanism for every storage, through Optuna's public
trial API (its own RDB heartbeat needs a trial's storage id, which the public API does not give); the workers'
clocks must agree to well within the grace period (NTP does).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

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


def open_storage(url: str) -> BaseStorage:
    """The storage for url: a journal file, else an RDB (SQLite, PostgreSQL, MySQL)."""
    path = journal_path(url)
    if path is not None:
        if not path.parent.is_dir():
            raise BadInput(f"--storage {url}: folder {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    for attempt in range(3):
        try:
            return RDBStorage(url)
        except Exception as exc:  # sqlalchemy errors name the URL's problem
            if "already exists" in str(exc) and attempt < 2:  # two workers created the tables at once
                time.sleep(0.5)
                continue
            raise BadInput(f"--storage {mask_url(url)}: cannot open ({redact(str(exc).splitlines()[0])})") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def beating(trial: optuna.Trial, heartbeat: Heartbeat | None) -> Iterator[None]:
    """While the block runs, refresh the trial's heartbeat every interval (nothing without a heartbeat)."""
    if heartbeat is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the grace period covers a few
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
