"""Glue for `greentune search`: run the study on one bench, export the best config on it, write the outputs."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import optuna

from tuner import paths
from tuner.errors import BadInput
from tuner.events import Progress
from tuner.outputs import summary_document, write_outputs
from tuner.parallel import Slot, run_slots, slot_job
from tuner.report import write_reports
from tuner.results import write_json
from tuner.server.base import ServerLauncher
from tuner.storage import mask_url
from tuner.study import (
    Search,
    SearchJob,
    SearchOutcome,
    SearchSettings,
    load_shared_study,
    recorded_results,
    study_name,
)

SUMMARY_ATTR = "summary"  # shared study attribute: the summary.json body last written by any worker


def save_summary(study: optuna.Study, document: dict[str, object]) -> None:
    """Keep the summary in the study, so a report or export needs nothing but the study."""
    study.set_user_attr(SUMMARY_ATTR, {**document, "study": {**document["study"],  # type: ignore[dict-item]
                                                            "storage": None}})


def materialize_study(url: str, name: str, output: Path) -> Path:
    """Write OUTPUT/summary.json and every trial record from a shared study alone (for report and export on any
    machine); returns output."""
    study = load_shared_study(url, name)
    summary = study.user_attrs.get(SUMMARY_ATTR)
    if summary is None:
        raise BadInput(f"--study {name}: no worker has finished a trial in {mask_url(url)} yet")
    results, duplicates = recorded_results(study)
    output.mkdir(parents=True, exist_ok=True)
    for result in results:
        write_json(paths.trial_record_path(output, result.number), {"trial": result.to_dict()})
    write_json(paths.summary_path(output), {**summary, "trial_count": len(results),
                                             "duplicate_proposals_reused": duplicates,
                                             "study": {"storage": mask_url(url), "name": name}})
    return output


def run_search_command(job: SearchJob, settings: SearchSettings, launcher: ServerLauncher,
                       progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """Search, then export OUTPUT/<model>/config.pbtxt for the best feasible trial; outputs are written throughout."""
    def publish(outcome: SearchOutcome) -> None:
        write_outputs(job, outcome)
        if settings.shared:
            save_summary(study, summary_document(job, outcome, None))

    search = Search(job, settings, progress, on_result=publish)
    study, _ = search.open()  # the study first: a bad --storage or a study that needs --resume is reported before any server
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
    def publish(outcome: SearchOutcome) -> None:
        write_outputs(job, outcome)
        save_summary(study, summary_document(job, outcome, None))

    search = Search(job, settings, progress, on_result=publish)
    study, _ = search.open()  # a bad --storage or a worker whose settings differ is refused before any server starts
    with job.bench(launcher, progress) as bench:
        outcome = search.run(bench)
    publish(outcome)
    write_reports(str(job.output))
    return outcome, search.measured_here


def run_parallel_search(job: SearchJob, settings: SearchSettings, slots: list[Slot], launchers: list[ServerLauncher],
                        progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """--parallel N: one bench per slot (GPU), one trial per bench at a time, all on one study in this process;
    then export the best config on the first bench and write the outputs over every slot's trials."""
    if not settings.shared:
        settings = dataclasses.replace(settings, study=study_name(job.model),
                                       storage=settings.storage or paths.study_url(job.output))
    job.output.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        benches = [stack.enter_context(slot_job(job, slot).bench(launcher, progress))
                   for slot, launcher in zip(slots, launchers, strict=True)]
        outcome = run_slots(job, settings, slots, benches, on_result=lambda o: write_outputs(job, o))
        for result in outcome.results:
            write_json(paths.trial_record_path(job.output, result.number), {"trial": result.to_dict()})
        exported = None
        if outcome.best is not None:
            exported = benches[0].export(outcome.best.config, paths.exported_config_path(job.output, job.model))
    write_outputs(job, outcome, exported)
    write_reports(str(job.output))
    return outcome, exported
