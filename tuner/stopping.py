"""When a search stops: every stopping rule and its counter, each stated once with its one message. Pure."""

from __future__ import annotations

import time
from collections.abc import Callable

from tuner.objective import best_trial, objective_value
from tuner.results import TrialResult

MAX_CONSECUTIVE_DUPLICATES = 40
MAX_CONSECUTIVE_FAILURES = 10


class Stopping:
    """Trial budget, wall-time budget, patience, grid exhausted, and too many duplicates or failures in a row."""

    def __init__(self, trials: int, timeout_s: float | None = None, patience: int | None = None,
                 grid_size: int | None = None, clock: Callable[[], float] = time.monotonic,
                 results: list[TrialResult] | None = None, objective: str = "efficiency",
                 shared: bool = False) -> None:
        self.trials = trials
        self.timeout_s = timeout_s
        self.patience = patience
        self.grid_size = grid_size
        self.clock = clock
        self.started = clock()
        self.measured = len(results or [])
        self.since_improvement = 0
        self.consecutive_duplicates = 0
        self.consecutive_failures = 0
        self.objective = objective
        self.best_score = _best_score(results or [], objective)
        self.shared = shared  # the budget is a shared study's: every worker's results count toward it

    def sync(self, measured: int) -> None:
        """A shared study: the configs measured by every worker so far."""
        self.measured = measured

    def record_measured(self, result: TrialResult, results: list[TrialResult]) -> None:
        """A config was measured (or screened, or failed); `results` holds every result, this one included.

        A load tool's failure spends a trial of the budget and counts toward failures in a row (a broken tool stops
        the search), but not toward --patience: it says nothing about the config."""
        self.measured += 1
        self.consecutive_duplicates = 0
        self.consecutive_failures = self.consecutive_failures + 1 if result.failed else 0
        if result.tool_failure:
            return
        current = _best_score(results, self.objective)
        if current is not None and (self.best_score is None or current > self.best_score):
            self.best_score, self.since_improvement = current, 0
        else:
            self.since_improvement += 1

    def record_duplicate(self) -> None:
        """The sampler proposed a config that was already measured (its result was reused)."""
        self.consecutive_duplicates += 1

    def reason(self, sampler_exhausted: bool = False) -> str | None:
        """Why the search stops now, or None to ask for another trial."""
        if self.measured >= self.trials and self.shared:
            return f"study budget reached ({self.trials} configs measured by all workers)"
        if self.measured >= self.trials:
            return f"trial budget reached ({self.trials} configs measured)"
        if sampler_exhausted or (self.grid_size is not None and self.measured >= self.grid_size):
            return f"grid exhausted ({self.measured} distinct configs measured)"
        if self.timeout_s is not None and self.clock() - self.started >= self.timeout_s:
            return f"timeout ({self.timeout_s:.0f} s)"
        if self.patience is not None and self.since_improvement >= self.patience:
            return f"no improvement in {self.patience} trials (--patience)"
        if self.consecutive_duplicates >= MAX_CONSECUTIVE_DUPLICATES:
            return f"space exhausted: the sampler proposed {self.consecutive_duplicates} measured configs in a row"
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            return f"{self.consecutive_failures} trials in a row failed (see failure_reason in trials.csv)"
        return None


def _best_score(results: list[TrialResult], objective: str) -> float | None:
    best = best_trial(results, objective)
    return objective_value(best.measurement, objective) if best is not None and best.measurement is not None else None
