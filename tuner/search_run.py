"""Glue for `greentune search`: run the study on one bench, export the best config on it, write the outputs."""

from __future__ import annotations

from pathlib import Path

from tuner import paths
from tuner.events import Progress
from tuner.outputs import write_outputs
from tuner.report import write_reports
from tuner.server.base import ServerLauncher
from tuner.study import Search, SearchJob, SearchOutcome, SearchSettings


def run_search_command(job: SearchJob, settings: SearchSettings, launcher: ServerLauncher,
                       progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """Search, then export OUTPUT/<model>/config.pbtxt for the best feasible trial; outputs are written throughout."""
    search = Search(job, settings, progress, on_result=lambda outcome: write_outputs(job, outcome))
    search.open()  # the study first: a bad --storage or a study that needs --resume is reported before any server
    exported = None
    with job.bench(launcher, progress) as bench:
        outcome = search.run(bench)
        if outcome.best is not None:
            exported = bench.export(outcome.best.config, paths.exported_config_path(job.output, job.model))
    write_outputs(job, outcome, exported)
    write_reports(str(job.output))
    return outcome, exported


def run_worker_command(job: SearchJob, settings: SearchSettings, launcher: ServerLauncher,
                       progress: Progress | None = None) -> tuple[SearchOutcome, list[int]]:
    """One worker of a shared study: measure until the study's budget is spent, then write the outputs and reports
    over every worker's trials. Returns the outcome and the trial numbers this worker measured."""
    search = Search(job, settings, progress, on_result=lambda outcome: write_outputs(job, outcome))
    search.open()  # a bad --storage or a worker whose settings differ is refused before any server starts
    with job.bench(launcher, progress) as bench:
        outcome = search.run(bench)
    write_outputs(job, outcome)
    write_reports(str(job.output))
    return outcome, search.measured_here
