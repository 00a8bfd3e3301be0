"""The commands' library calls: `search` (one bench, or one per GPU with --parallel), `worker` (one worker of a
shared study) and a report or export from a shared study alone; each runs the search loop and writes the outputs."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

from tuner import paths
from tuner.errors import BadInput
from tuner.events import Progress, Warned, emit
from tuner.impact import ImpactInputs
from tuner.job import SearchJob, SearchSettings
from tuner.meters import nvml
from tuner.modelset import SetJob, measure_sharing
from tuner.outputs import summary_document, write_outputs, write_summary, write_trials_csv
from tuner.parallel import Slot, plan_slots, run_slots, slot_job
from tuner.redact import mask_url
from tuner.report import write_reports
from tuner.search import Search, SearchOutcome
from tuner.server.base import ServerLauncher
from tuner.server.choose import LauncherChoice
from tuner.study import StudyStore, study_name


def run_search_command(job: SearchJob, settings: SearchSettings, launchers: LauncherChoice, parallel: int = 1,
                       progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """Search, then export OUTPUT/<model>/config.pbtxt for the best feasible trial; outputs are written throughout.
    --parallel N: one server per slot (GPU), planned here; on CPU a warning says the servers share the cores."""
    if parallel == 1:
        return run_one_search(job, settings, launchers.launcher(pull_progress=progress), progress)
    slots, warning = plan_slots(job.gpus, parallel, nvml.gpu_count(), job.output)
    if warning:
        emit(progress, Warned(warning))
    slot_launchers = [launchers.launcher(gpus=None if slot.gpu is None else [slot.gpu]) for slot in slots]
    return run_parallel_search(job, settings, slots, slot_launchers, progress)


def run_one_search(job: SearchJob, settings: SearchSettings, launcher: ServerLauncher,
                   progress: Progress | None = None) -> tuple[SearchOutcome, Path | None]:
    """Search on one bench, export the best config on it, write the outputs and reports."""
    search = Search(job, settings, progress)
    store = search.open()  # the study first: a bad --storage or a study that needs --resume is reported before any server

    def publish(outcome: SearchOutcome) -> None:
        write_outputs(job, outcome)
        if settings.shared:
            store.save_summary(summary_document(job, outcome, None))

    search.on_result = publish
    exported = None
    with job.bench(launcher, progress) as bench:
        outcome = search.run(bench)
        if isinstance(job, SetJob):
            outcome.sharing = measure_sharing(job, bench, outcome)
        if outcome.best is not None:
            exported = job.export(bench, outcome.best.config)
    write_outputs(job, outcome, exported)
    write_reports(str(job.output))
    return outcome, exported


def run_worker_command(job: SearchJob, settings: SearchSettings, launcher: ServerLauncher,
                       progress: Progress | None = None) -> tuple[SearchOutcome, list[int]]:
    """One worker of a shared study: measure until the study's budget is spent, then write the outputs and reports
    over every worker's trials. Returns the outcome and the trial numbers this worker measured."""
    search = Search(job, settings, progress)
    store = search.open()  # a bad --storage or a worker whose settings differ is refused before any server starts

    def publish(outcome: SearchOutcome) -> None:
        write_outputs(job, outcome)
        store.save_summary(summary_document(job, outcome, None))

    search.on_result = publish
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
        outcome = run_slots(job, settings, slots, benches, lambda o: write_outputs(job, o), progress)
        store = StudyStore.read(outcome.storage_url, outcome.study_name)
        for result in outcome.results:
            store.write_record(result, job.output)
        exported = None
        if isinstance(job, SetJob):
            outcome.sharing = measure_sharing(job, benches[0], outcome)
        if outcome.best is not None:
            exported = job.export(benches[0], outcome.best.config)
    write_outputs(job, outcome, exported)
    write_reports(str(job.output))
    return outcome, exported


def materialize_study(url: str, name: str, output: Path) -> Path:
    """Write OUTPUT/summary.json, trials.csv and every trial record from a shared study alone (for report and export
    on any machine); returns output."""
    store = StudyStore.read(url, name)
    summary = store.summary()
    if summary is None:
        raise BadInput(f"--study {name}: no worker has finished a trial in {mask_url(url)} yet")
    results, duplicates = store.results()
    output.mkdir(parents=True, exist_ok=True)
    for result in results:
        store.write_record(result, output)
    write_summary(output, {**summary, "trial_count": len(results), "duplicate_proposals_reused": duplicates,
                           "study": {"storage": mask_url(url), "name": name}})
    baseline_number = (summary.get("baseline") or {}).get("trial")
    baseline = next((r for r in results if r.number == baseline_number), None)
    impact = ImpactInputs.from_dict((summary.get("impact") or {}).get("inputs") or {})
    write_trials_csv(output, results, baseline, impact)
    return output

