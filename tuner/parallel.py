"""Several GPUs on one host: `search --gpus 0,1 --parallel 2` runs one bench (server + meters) per GPU and one
trial per bench at a time, all as workers of one shared study in this process (the same loop as `greentune
worker`, so the scheduling is Optuna's: each slot asks, measures on its own server, tells).

Each slot's bench is the job with gpus=[i]: the local launcher sets CUDA_VISIBLE_DEVICES=i (docker: a device request
for GPU i), the NVML meter reads GPU i only, and idle power is measured per bench, so per GPU. Each slot writes its
server log under OUTPUT/gpu-i/ (cpu-i/ on CPU).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuner.bench import TrialBench
from tuner.errors import BadInput
from tuner.events import Progress
from tuner.job import SearchJob, SearchSettings
from tuner.search import Search, SearchOutcome, SearchStopped


@dataclass(frozen=True)
class Slot:
    """One server's share: the GPU it is pinned to (None on CPU) and its own output folder."""

    index: int
    gpu: int | None
    output: Path


def plan_slots(gpus: list[int] | None, parallel: int, gpu_count: int, output: Path) -> tuple[list[Slot], str | None]:
    """The slots for --gpus/--parallel, and a warning for the user (or None).

    On GPUs: one slot per GPU, --parallel must equal the number of GPUs (default: every GPU NVML sees).
    On CPU: --parallel N slots that share the cores (allowed, with a warning)."""
    if parallel < 1:
        raise BadInput(f"--parallel: expected a positive number of servers, got {parallel}")
    if gpu_count == 0:
        if gpus:
            raise BadInput(f"--gpus {','.join(map(str, gpus))}: NVML sees no GPU on this machine")
        warning = (f"--parallel {parallel} on CPU: the {parallel} servers compete for the same cores, so each "
                   "trial's throughput and energy are not those of a server alone" if parallel > 1 else None)
        return [Slot(i, None, output / f"cpu-{i}") for i in range(parallel)], warning
    chosen = gpus if gpus is not None else list(range(gpu_count))
    missing = [g for g in chosen if g >= gpu_count]
    if missing:
        raise BadInput(f"--gpus: GPU {missing[0]} does not exist (NVML sees {gpu_count}: 0-{gpu_count - 1})")
    if parallel != len(chosen):
        raise BadInput(f"--parallel {parallel}: expected one server per GPU, i.e. {len(chosen)} for --gpus "
                       f"{','.join(map(str, chosen))}")
    return [Slot(i, g, output / f"gpu-{g}") for i, g in enumerate(chosen)], None


def slot_job(job: SearchJob, slot: Slot) -> SearchJob:
    """The job as one slot sees it: pinned to its GPU, metered on it alone, its own output folder."""
    return dataclasses.replace(job, gpus=None if slot.gpu is None else [slot.gpu], output=slot.output)


def run_slots(job: SearchJob, settings: SearchSettings, slots: list[Slot], benches: Sequence[TrialBench],
              on_result: Callable[[SearchOutcome], None] | None = None,
              progress: Progress | None = None) -> SearchOutcome:
    """Run one shared-study worker per slot, each on its bench, until the study's budget is spent; the outcome
    holds every slot's results. The first error in any slot, or Ctrl-C here, stops them all: each finishes the trial
    in hand and asks for no other; the error is raised once every slot has ended, so before the benches close."""
    if not settings.shared:
        raise ValueError("run_slots needs a shared study (settings.study)")
    stop = threading.Event()
    searches = [Search(slot_job(job, slot), settings, progress, on_result, stop=stop) for slot in slots]
    searches[0].open()  # create the study once, before the slots race to join it
    outcomes: dict[int, SearchOutcome] = {}
    errors: list[BaseException] = []
    ended = [threading.Event() for _ in slots]

    def work(i: int) -> None:
        try:
            outcomes[i] = searches[i].run(benches[i])
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)
            stop.set()
        finally:
            ended[i].set()

    threads = [threading.Thread(target=work, args=(i,), name=f"slot-{slot.index}") for i, slot in enumerate(slots)]
    try:
        for thread in threads:
            thread.start()
        _wait_for(threads, ended)
    except BaseException:
        # Ctrl-C lands in this thread; the slots cannot be interrupted, so they are told to stop and waited for
        # (each ends with its trial in hand): only then may the caller stop their servers.
        stop.set()
        _wait_for(threads, ended)
        raise
    if errors:
        raise next((e for e in errors if not isinstance(e, SearchStopped)), errors[0])
    final = max(outcomes.values(), key=lambda o: len(o.results))
    final.idle_power_w = {f"{name}@slot{i}": w for i, o in outcomes.items() for name, w in o.idle_power_w.items()}
    return final


def _wait_for(threads: list[threading.Thread], ended: list[threading.Event]) -> None:
    """Wait until every started slot has ended. On an Event, not Thread.join: a join that Ctrl-C interrupts marks
    the thread as stopped while it still runs (CPython 3.11), so joining it again would return at once."""
    for thread, done in zip(threads, ended, strict=True):
        if thread.ident is not None:
            done.wait()
            thread.join()
