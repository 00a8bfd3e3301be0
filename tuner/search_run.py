"""Glue for `greentune search`: run the study, export the best config on the live server, write the outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.export import export_config
from tuner.measure import Progress
from tuner.outputs import write_outputs
from tuner.report import write_reports
from tuner.server.base import Server
from tuner.study import Search, SearchJob, SearchOutcome, SearchSettings


def run_search_command(job: SearchJob, settings: SearchSettings, launcher: Any,
                       progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """Search, then export OUTPUT/<model>/config.pbtxt for the best feasible trial; outputs are written throughout."""
    exported: list[Path] = []

    def after(server: Server, outcome: SearchOutcome) -> None:
        if outcome.best is not None:
            path = Path(job.output) / job.model / "config.pbtxt"
            exported.append(export_config(server, job.model, job.base, outcome.best.config, job.inputs, path))

    search = Search(job, settings, launcher, progress, on_result=lambda outcome: write_outputs(job, outcome))
    outcome = search.run(after=after)
    path = exported[0] if exported else None
    write_outputs(job, outcome, path)
    write_reports(str(job.output))
    return outcome, path
