"""Screening, the study's side: an Optuna pruner that stops a trial once its windows are worse than the best completed
trial beyond the measured spread, and the per-trial screen that reports each window to Optuna and asks it. Reads the
study only, never a server."""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from tuner.objective import Constraints, check_objective
from tuner.results import Spread
from tuner.screening import ScreenWindow, constraint_breach, window_value

SINGLE_WINDOW_SDS = 3.0  # one window: this many of the best's window-to-window sd is the noise allowed
UNITS = {"efficiency": "infer/J", "throughput": "infer/s"}


class SpreadPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose windows are worse than the best completed feasible trial beyond the measured spread.

    The best is the COMPLETE trial with every constraint held and the highest value; its spread is that of its last
    `windows` intermediate values (the windows its value is the mean of), and with fewer than two there is no
    spread and nothing is pruned. A trial with two or more windows is pruned when the upper end of its 95%
    confidence interval (Student's t, over its last `windows` values) lies below the lower end of the best's; with
    one window, when that value plus `single_window_sds` of the best's window-to-window sd does. Never before the
    first window, never the baseline, never without a best (so never the first trial)."""

    def __init__(self, windows: int = 3, single_window_sds: float = SINGLE_WINDOW_SDS, unit: str = "infer/J") -> None:
        if windows < 1:
            raise ValueError(f"windows: expected at least 1, got {windows}")
        self.windows = windows
        self.single_window_sds = single_window_sds
        self.unit = unit

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """Optuna's hook: True when the trial's reported windows are clearly worse than the best's."""
        if trial.user_attrs.get("baseline"):
            return False
        values = [value for _, value in sorted(trial.intermediate_values.items())]
        return self.verdict(study, values) is not None

    def reference(self, study: optuna.Study) -> tuple[int, Spread] | None:
        """The best completed feasible trial's number and the spread of its windows; None when there is none yet."""
        if study.direction != StudyDirection.MAXIMIZE:
            return None
        complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.value is not None and all(v <= 0 for v in t.constraints.values())]
        if not complete:
            return None
        best = max(complete, key=lambda t: (t.value, len(t.intermediate_values), -t.number))
        values = [v for _, v in sorted(best.intermediate_values.items()) if math.isfinite(v)][-self.windows:]
        return best.number, Spread.of(values)

    def verdict(self, study: optuna.Study, values: Sequence[float]) -> str | None:
        """Why a trial whose windows so far gave `values` (oldest first) is clearly worse than the best, or None."""
        own_values = [v for v in values if math.isfinite(v)][-self.windows:]
        reference = self.reference(study)
        if not own_values or reference is None or reference[1].n < 2:
            return None
        number, best = reference
        low = best.interval()[0]
        floor = f"below trial {number}'s 95% CI lower bound {low:.2f} {self.unit}"
        if len(own_values) >= 2:
            own = Spread.of(own_values)
            high = own.interval()[1]
            if high < low:
                return f"{own.mean:.2f} {self.unit}, 95% CI upper bound {high:.2f}, {floor}"
            return None
        value = own_values[0]
        reach = value + self.single_window_sds * best.sd
        if reach < low:
            return (f"{value:.2f} {self.unit} + {self.single_window_sds:g} sd of trial {number}'s windows "
                    f"({best.sd:.2f}) = {reach:.2f}, {floor}")
        return None


class TrialScreen:
    """One measurement attempt of a running trial, called after every window: reports the window's objective to
    Optuna (trial.report) and returns why to stop, or None. `judge` False (the baseline) only reports; a retried
    attempt starts its steps after the last attempt's (first_step), and is judged on its own windows only."""

    def __init__(self, trial: optuna.Trial, pruner: SpreadPruner, constraints: Constraints, objective: str,
                 judge: bool = True, first_step: int = 1) -> None:
        self.trial = trial
        self.pruner = pruner
        self.constraints = constraints
        self.objective = check_objective(objective)
        self.judge = judge
        self.first_step = first_step
        self.values: list[float] = []

    @property
    def next_step(self) -> int:
        """The first step a further attempt of this trial reports at."""
        return self.first_step + len(self.values)

    def __call__(self, windows: Sequence[ScreenWindow]) -> str | None:
        """Report the latest window; a reason to stop, or None."""
        if not windows:
            return None
        value = window_value(windows[-1], self.objective)
        if value is not None:
            self.trial.report(value, self.next_step)
            self.values.append(value)
        if not self.judge:
            return None
        return constraint_breach(windows, self.constraints) or self.pruner.verdict(self.trial.study, self.values)


def pruner_for(objective: str, windows: int) -> SpreadPruner:
    """The study's pruner for an objective, judging on the last `windows` windows (--stable-windows)."""
    return SpreadPruner(windows=windows, unit=UNITS[check_objective(objective)])
