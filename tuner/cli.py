"""Click commands: parse flags, call one library function, render with rich, map errors to exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBar

from tuner import events
from tuner.compare import CompareJob, compare_command
from tuner.compare_words import render_markdown
from tuner.doctor import run_checks
from tuner.errors import EXIT_FAILURE, BadInput, GreentuneError, NoFeasibleConfig
from tuner.job import SearchSettings
from tuner.modelset import job_from_flags
from tuner.paths import compare_json_path, compare_md_path
from tuner.redact import mask_url, redact
from tuner.run import MeasureJob, export_command, measure_command, report_command
from tuner.search_run import run_search_command, run_worker_command
from tuner.server.choose import LauncherChoice
from tuner.server.docker import remove_leftover_containers
from tuner.terminal import (
    best_text,
    doctor_table,
    load_text,
    measurement_table,
    no_feasible_message,
    search_result,
    status_text,
    stopped_line,
    trial_line,
    warning_line,
    worker_line,
)

console = Console(stderr=True, emoji=False)  # user values such as :x: print as given
out = Console(emoji=False)


# Flags and environment variables whose values are URLs that may carry a password or token (masked everywhere).
URL_FLAGS = ("storage", "url", "docker_host")
URL_ENVIRONMENT = ("GREENTUNE_STORAGE", "DOCKER_HOST")


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler so cleanup runs exactly as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn GreentuneErrors into one line on stderr and their exit code; Ctrl-C/SIGTERM into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        # Remember the credentials in URL-valued flags and environment values first, so none reaches an output.
        for key in URL_FLAGS:
            mask_url(kwargs.get(key))
        for name in URL_ENVIRONMENT:
            mask_url(os.environ.get(name))
        try:
            return fn(*args, **kwargs)
        except GreentuneError as exc:
            console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, markup=True,
                          soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] server stopped; rerun with --resume to continue", highlight=False)
            sys.exit(130)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            console.print(f"[bold red]error:[/] {escape(redact(f'{where}{exc.strerror or exc}'))}", highlight=False)
            sys.exit(EXIT_FAILURE)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="greentune")
def cli() -> None:
    """greentune: find the Triton serving config with the most inferences per joule.

    \b
    Measure one config:   greentune measure --model-repository model_repository --model mlp --set instance_count=2
    Search for the best:  greentune search --model-repository model_repository --model mlp --trials 12 --output out/
    """


def with_options(fn: Callable[..., Any], options: Sequence[Callable[[Any], Any]]) -> Callable[..., Any]:
    """Apply a group of click options to a command, first option first in --help."""
    for option in reversed(options):
        fn = option(fn)
    return fn


def server_options(fn: Callable[..., Any], model_required: bool = True) -> Callable[..., Any]:
    """Flags naming the model and how to run Triton."""
    options = [
        click.option("--model-repository", "-r", required=True, type=click.Path(path_type=Path),
                     help="Triton model repository (folder of model folders)."),
        click.option("--model", "-m", required=model_required, default=None,
                     help="Name of the model to tune (a folder in the repository)"
                          + ("." if model_required else "; or --models FILE for a set tuned together.")),
        click.option("--launcher", type=click.Choice(["local", "docker", "remote"]), default="local",
                     show_default=True,
                     help="local: start tritonserver here; docker: run it in a container; remote: use --url."),
        click.option("--tritonserver", type=click.Path(path_type=Path), default=None,
                     help="tritonserver binary (default: on PATH, else the embedded nvidia-pytriton build)."),
        click.option("--url", default=None, help="HTTP address of a running server for --launcher remote."),
        click.option("--image", default=None,
                     help="Triton image for --launcher docker (default: NVIDIA's tritonserver image)."),
        click.option("--docker-host", default=None,
                     help="Docker Engine API, e.g. unix:///run/podman.sock (default: DOCKER_HOST or the default socket)."),
        click.option("--shm-size", default="1g", show_default=True, help="Container shared memory (docker)."),
        click.option("--network", type=click.Choice(["host", "bridge"]), default="host", show_default=True,
                     help="Container networking (docker): host, or bridge with ports published on 127.0.0.1."),
        click.option("--ready-timeout", type=float, default=120.0, show_default=True,
                     help="Seconds to wait for the server to become ready."),
        click.option("--ports", default=None, metavar="HTTP,GRPC,METRICS",
                     help="Fixed ports for a local server (default: free ports picked per start)."),
    ]
    return with_options(fn, options)


def load_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags for the load generator and measurement windows."""
    options = [
        click.option("--concurrency", "-c", default=None, metavar="N|auto",
                     help="Closed loop: requests in flight at once (default 8). search also takes 'auto': per config, "
                          "the highest load that keeps p99 within --max-p99-ms."),
        click.option("--request-rate", type=float, default=None,
                     help="Open loop: requests per second (the production rate)."),
        click.option("--shape", multiple=True, help="NAME:d1,d2 for inputs with dynamic dims (repeatable)."),
        click.option("--input-data", type=click.Path(path_type=Path), default=None,
                     help="Real inputs in perf_analyzer's JSON format."),
        click.option("--request-timeout", type=float, default=30.0, show_default=True, help="Seconds per request."),
        click.option("--load-generator", type=click.Choice(["auto", "builtin", "perf_analyzer"]), default="auto",
                     show_default=True,
                     help="Load engine: perf_analyzer (Triton's own client), builtin (multi-process asyncio gRPC), or "
                          "auto: perf_analyzer where found, else builtin."),
        click.option("--perf-analyzer", type=click.Path(path_type=Path), default=None,
                     help="perf_analyzer binary (default: on PATH, else the copy `greentune doctor --fetch` caches)."),
        click.option("--max-failure-rate", type=float, default=0.05, show_default=True,
                     help="A measurement with a larger fraction of failed requests fails (with counts)."),
        click.option("--warmup", type=float, default=2.0, show_default=True, help="Warm-up seconds (not measured)."),
        click.option("--window", type=float, default=None,
                     help="Seconds per measurement window (default 2; 5 with NVML, never below 5 with NVML)."),
        click.option("--max-windows", type=int, default=10, show_default=True,
                     help="Give up on stability after this many windows."),
        click.option("--stability", type=float, default=0.10, show_default=True,
                     help="Last 3 windows' throughput and p99 within this fraction of their mean."),
        click.option("--energy-meter", type=click.Choice(["auto", "nvml", "rapl", "estimate"]), default="auto",
                     show_default=True,
                     help="auto: NVML for the server's GPUs plus RAPL (else the estimate) for the host CPU."),
        click.option("--gpus", default=None, metavar="all|0,1",
                     help="GPUs the server may use and that are metered (default: all NVML sees; docker: none "
                          "unless given)."),
        click.option("--cpu-tdp-watts", type=float, default=None,
                     help="CPU TDP for the estimate meter (default: table or 10 W per logical core)."),
        click.option("--energy-accounting", type=click.Choice(["total", "dynamic"]), default="total",
                     show_default=True, help="total joules, or dynamic: idle power subtracted."),
        click.option("--idle-seconds", type=float, default=3.0, show_default=True,
                     help="Idle power is measured this long (server up, no load) before measuring."),
    ]
    return with_options(fn, options)


def impact_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags stating production traffic, grid carbon intensity and prices (override the space's impact: block)."""
    options = [
        click.option("--traffic", default=None, metavar="R|R/day",
                     help="Production traffic: inferences per second, or R/day (also R/h, R/min) for annual figures."),
        click.option("--carbon-intensity", default=None, metavar="G",
                     help="Grid carbon intensity in gCO2e per kWh (no carbon figure without it)."),
        click.option("--energy-price", default=None, metavar="P", help="Energy price per kWh (in --currency)."),
        click.option("--currency", default=None, metavar="EUR", help="Label for prices, e.g. EUR or USD."),
        click.option("--pue", default=None, metavar="F",
                     help="Data-centre power usage effectiveness, 1.0 to 5 (default 1.0: metered energy only)."),
        click.option("--gpu-hourly-price", default=None, metavar="H",
                     help="Cost of one serving machine per hour: with --traffic, machines needed and their cost."),
    ]
    return with_options(fn, options)



@cli.command()
@server_options
@load_options
@click.option("--set", "settings", multiple=True, metavar="KNOB=VALUE",
              help="Server knob to apply (repeatable): instance_count, instance_kind, max_batch_size, "
                   "dynamic_batching, max_queue_delay_microseconds, preferred_batch_size.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("greentune-out"), show_default=True,
              help="Folder for measurement.json and the server log.")
@handle_errors
def measure(**flags: Any) -> None:
    """Measure one serving config: throughput, latency, energy and memory.

    \b
    Example:
      greentune measure -r model_repository -m mlp --set instance_count=2 \\
        --set max_batch_size=16 --set dynamic_batching=true --concurrency 8
    """
    job = MeasureJob.from_flags(flags)
    with console.status("starting Triton…") as status:
        measurement, path = measure_command(job, lambda event: status.update(status_text(event)))
    out.print(measurement_table(measurement, f"{job.model}: {job.trial.describe()} · {load_text(job.load.describe())}"))
    if not measurement.stable:
        console.print("[yellow]warning:[/] measurement did not stabilise; raise --max-windows or --window")
    how = " (auto)" if flags["load_generator"] == "auto" else ""
    console.print(f"load generator: {job.load.spec.engine}{how}; wrote {escape(str(path))}", highlight=False)


@cli.command()
@functools.partial(server_options, model_required=False)
@click.option("--models", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Compare two sets of configs of a set of models on one server (the set file of search --models: "
                   "each model's load, inputs and limits); --baseline and --candidate are then folders holding "
                   "<model>/config.pbtxt for every model (a model repository or a search's output folder).")
@load_options
@click.option("--baseline", type=click.Path(path_type=Path), required=True,
              help="What runs now: a config.pbtxt, a model folder, a second repository (same model files as -r), "
                   "or a version folder of --model in -r; with --models, a folder of <model>/config.pbtxt.")
@click.option("--candidate", type=click.Path(path_type=Path), required=True,
              help="The change: a config.pbtxt, a model folder, a second repository (same model files as -r), "
                   "or a version folder of --model in -r; with --models, a folder of <model>/config.pbtxt.")
@click.option("--max-regression", default="5%", show_default=True,
              help="Energy per inference the candidate may add before the gate fails (e.g. 5% or 0.05).")
@click.option("--min-throughput", type=float, default=None, help="Constraint on the candidate: at least this many infer/s.")
@click.option("--max-p99-ms", type=float, default=None, help="Constraint on the candidate: p99 latency at most this many ms.")
@click.option("--max-memory-mb", type=float, default=None, help="Constraint on the candidate: server memory at most this many MB.")
@click.option("--pairs", type=int, default=3, show_default=True, help="Pairs (baseline and candidate, in random order) measured at least.")
@click.option("--max-pairs", type=int, default=10, show_default=True, help="Pairs measured at most while unresolved.")
@click.option("--budget", default="15m", show_default=True,
              help="Stop adding pairs when another would overrun this much time, e.g. 10m, 1h.")
@click.option("--inconclusive", type=click.Choice(["fail", "pass"]), default="fail", show_default=True,
              help="Exit status when the interval straddles the threshold: fail (5) or pass (0).")
@click.option("--seed", type=int, default=None, help="Seed of each pair's order (default: random).")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("greentune-compare"), show_default=True,
              help="Folder for compare.md, compare.json and the server log.")
@handle_errors
def compare(**flags: Any) -> None:
    """Gate a config change: does the candidate cost more energy per inference than the baseline, beyond the
    measurement spread? Both configs run on one server, interleaved in pairs (A B or B A at random), until the
    candidate/baseline ratio's 95% interval (paired t on log-ratios) clears the threshold or the budget runs out.

    Prints the Markdown verdict (also OUTPUT/compare.md) and writes OUTPUT/compare.json. Exit status: 0 pass,
    4 regression (the interval lies above 1 + --max-regression, or the candidate breaks a constraint),
    5 inconclusive (the interval straddles it; 0 with --inconclusive pass), 2 bad input, 1 other failure,
    130 interrupted.

    With --models FILE both sides are sets: every model of the set is loaded with that side's config and driven at
    its own load from the file; the gate is on the set's energy per inference (all joules over all inferences), and
    each model's own limits from the file (named MODEL/constraint) and the server's apply to the candidate.

    \b
    Example:
      greentune compare -r model_repository -m mlp --baseline main.pbtxt \\
        --candidate model_repository/mlp/config.pbtxt -c 16 -o compare-out
      greentune compare -r model_repository --models examples/model_set.yaml \\
        --baseline model_repository --candidate set-out -o compare-out
    """
    job = CompareJob.from_flags(flags)
    with console.status("starting Triton…") as status:
        def progress(event: events.Event) -> None:
            status.update(status_text(event))
            if isinstance(event, events.PairMeasured):
                console.print(status_text(event), highlight=False)

        comparison = compare_command(job, progress)
    click.echo(render_markdown(comparison))
    console.print(f"wrote {escape(str(compare_md_path(job.output)))}, {escape(str(compare_json_path(job.output)))}",
                  highlight=False)
    sys.exit(comparison.exit_code)


def set_server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """server_options with --model optional (search and worker take --models FILE instead)."""
    return server_options(fn, model_required=False)


def search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by search and worker: the space, constraints, budgets, sampler, study and outputs."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
        click.option("--models", type=click.Path(path_type=Path), default=None, metavar="FILE",
                     help="Tune a set of models on one server together: a YAML file giving each model's load "
                          "(concurrency or request_rate), limits (max_p99_ms, min_throughput) and shape/input_data; "
                          "max_memory_mb is the whole server's. See examples/model_set.yaml."),
        click.option("--sharing", type=click.Choice(["best", "baseline", "off"]), default="best", show_default=True,
                     help="With --models: after the search, measure each model alone (its config of the best set, or "
                          "its own config) to report what sharing one server saves."),
        click.option("--space", "space_name", default="default", show_default=True,
                      help="Search space: a YAML file, or a built-in space: default, cpu or gpu (search_spaces/ in "
                           "the repository)."),
        click.option("--min-throughput", type=float, default=None, help="Constraint: at least this many infer/s."),
        click.option("--max-p99-ms", type=float, default=None, help="Constraint: p99 latency at most this many ms."),
        click.option("--max-memory-mb", type=float, default=None,
                      help="Constraint: server memory at most this many MB (GPU memory where measured, else server RSS)."),
        click.option("--trials", "-n", type=int, default=12, show_default=True, help="Configs to measure (baseline included)."),
        click.option("--timeout", default=None, help="Stop starting trials after this long, e.g. 30m, 1h, 90s."),
        click.option("--patience", type=int, default=None, help="Stop after this many trials without improvement."),
        click.option("--sampler", type=click.Choice(["tpe", "gp", "grid", "random"]), default="tpe", show_default=True,
                      help="Optuna sampler (gp needs: pip install 'greentune[gp]')."),
        click.option("--objective", type=click.Choice(["efficiency", "throughput"]), default="efficiency",
                      show_default=True, help="Maximise inferences per joule, or infer/s (both under the constraints); "
                                              "the export is this objective's pick, the outputs show both picks."),
        click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed."),
        click.option("--first-trials/--no-first-trials", default=True, show_default=True,
                     help="Right after the baseline, measure dynamic batching with a max batch of at least the "
                          "requests in flight at 1-3 instances, before the sampler's random start."),
        click.option("--screening/--no-screening", default=True, show_default=True,
                     help="Stop a trial early once its windows are worse than the best trial's beyond the measured "
                          "spread, or p99 is over twice --max-p99-ms, or memory over --max-memory-mb (labelled "
                          "screened; never the pick)."),
        click.option("--storage", default=None, envvar="GREENTUNE_STORAGE", metavar="URL",
                      help="Optuna storage: sqlite:///, postgresql://, mysql:// or journal:///path/file (default: "
                           "OUTPUT/study.db). Env GREENTUNE_STORAGE: a URL with a password belongs there, not on the "
                           "command line, where other users see it in ps and /proc."),
        click.option("--study", default=None, metavar="NAME",
                      help="A shared study many workers contribute to (with --storage); created by the first to open it."),
        click.option("--heartbeat-interval", type=int, default=10, show_default=True,
                      help="Shared study: seconds between a worker's heartbeats."),
        click.option("--allow-mixed-hardware", is_flag=True,
                     help="Shared study: accept workers whose GPU model or energy meters differ from the study's."),
        click.option("--grace-period", type=int, default=30, show_default=True,
                      help="Shared study: seconds without a heartbeat after which a worker's trial is failed and retried."),
        impact_options,
        click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("greentune-out"), show_default=True,
                      help="Folder for config.pbtxt, summary.json, trials.csv, the study and logs."),
    ]
    return with_options(fn, options)


@cli.command()
@set_server_options
@load_options
@search_options
@click.option("--resume", is_flag=True, help="Continue the study in OUTPUT (or --storage) to --trials configs.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Re-measure the top 3 configs until each has N measurements, then choose by their pooled mean.")
@click.option("--parallel", type=int, default=1, show_default=True,
              help="Servers at once: one per GPU of --gpus (one trial each at a time); on CPU allowed with a warning.")
@handle_errors
def search(**flags: Any) -> None:
    """Search serving configs for the most inferences per joule (or, with --objective throughput, the most
    infer/s) within the constraints.

    With --models FILE, a set of models is tuned together on one server (each under its own load and limits
    from FILE), then each is measured alone for what sharing the server saves; one config.pbtxt per model.

    Writes OUTPUT/<model>/config.pbtxt (the objective's best feasible config, loaded and smoke-tested first),
    OUTPUT/summary.json and OUTPUT/trials.csv. Exit status: 0 found a feasible config,
    3 none was feasible, 2 bad input, 1 other failure, 130 interrupted (rerun with --resume).

    \b
    Example:
      greentune search -r model_repository -m mlp --trials 12 --max-p99-ms 20 -o out/
      greentune search -r model_repository -m mlp -c auto --max-p99-ms 50 -o out/ \\
        --traffic 2000 --carbon-intensity 400 --energy-price 0.15 --currency EUR
      greentune search -r model_repository --models examples/model_set.yaml --space cpu -o out-set/
    """
    job, settings = job_from_flags(flags), SearchSettings.from_flags(flags)
    launchers = LauncherChoice.from_flags(flags)
    bar = ProgressBar(TextColumn("[bold]trial[/]"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console, transient=False)
    task = bar.add_task("starting Triton…", total=settings.trials)
    shown = {"config": "", "best": "none yet"}

    def progress(event: events.Event) -> None:
        if isinstance(event, events.TrialStarted):
            shown["config"] = escape(event.config) + (" (baseline)" if event.baseline else "")
            bar.update(task, description=f"{shown['config']} · best: {shown['best']}")
        elif isinstance(event, events.WindowMeasured):
            bar.update(task, description=f"{shown['config']} · window {event.index}: "
                                         f"{event.throughput_per_s:.0f} infer/s · best: {shown['best']}")
        elif isinstance(event, events.TrialFinished):
            shown["best"] = best_text(event.best, job.objective) or shown["best"]
            bar.update(task, completed=event.measured, description=f"best: {shown['best']}")
            bar.console.print(trial_line(event.result), highlight=False)
        elif isinstance(event, (events.ServerRestarted, events.TrialsRecovered, events.TrialRetried)):
            bar.console.print(f"[yellow]{status_text(event)}[/]", highlight=False)
        elif isinstance(event, events.Warned):
            bar.console.print(warning_line(event.text), highlight=False)
        elif isinstance(event, events.ImagePulling):
            bar.update(task, description=status_text(event))

    with bar:
        outcome, exported = run_search_command(job, settings, launchers, flags["parallel"], progress)
    out.print(stopped_line(job, outcome), highlight=False)
    if outcome.best is None:
        raise NoFeasibleConfig(no_feasible_message(job, outcome))
    for renderable in search_result(job, outcome, exported):
        out.print(renderable, highlight=False)


@cli.command()
@set_server_options
@load_options
@search_options
@handle_errors
def worker(**flags: Any) -> None:
    """Join a shared study and measure its configs on this machine's server until the study's budget is spent.

    Start as many workers as you have GPUs or machines, all with the same flags; the first creates the study (its
    --trials is the budget of all workers together), the others join it. A worker whose settings (model, space,
    load, constraints, meter, objective) differ from the study's is refused (exit 2). A worker that dies stops
    beating; after --grace-period its trial is measured again by another worker. Writes OUTPUT/summary.json,
    trials.csv and the reports over every worker's trials; no config is exported (use greentune export).

    \b
    Example:
      greentune worker -r model_repository -m mlp --storage postgresql://USER@db/greentune --study mlp-h100 \\
        --trials 40 -o out-$(hostname)/
    """
    if not flags["study"] or not flags["storage"]:
        raise BadInput("worker needs --storage URL and --study NAME (the shared study to join)")
    job, settings = job_from_flags(flags), SearchSettings.from_flags(flags)
    launcher = LauncherChoice.from_flags(flags).launcher()

    def progress(event: events.Event) -> None:
        if isinstance(event, events.TrialFinished):
            console.print(trial_line(event.result), highlight=False)
        elif isinstance(event, events.TrialStarted):
            console.print(f"trial {event.number:>3} started  {escape(event.config)}", highlight=False)
        elif isinstance(event, (events.ServerRestarted, events.TrialsRecovered, events.TrialRetried)):
            console.print(f"[yellow]{status_text(event)}[/]", highlight=False)

    outcome, measured_here = run_worker_command(job, settings, launcher, progress)
    out.print(worker_line(job, settings, outcome, measured_here), highlight=False)


@cli.command()
@click.option("--fetch", is_flag=True,
              help="Download the embedded Triton server (nvidia-pytriton) and perf_analyzer (tritonclient) if missing.")
@click.option("--cleanup", is_flag=True, help="Remove containers left by killed greentune runs (found by label).")
@click.option("--docker-host", default=None, help="Docker Engine API for --cleanup (default: DOCKER_HOST).")
@handle_errors
def doctor(fetch: bool, cleanup: bool, docker_host: str | None) -> None:
    """Show which launchers, meters, GPUs, Docker API and tritonserver binaries work here, and how to fix the rest.

    \b
    Example:
      greentune doctor --fetch
      greentune doctor --cleanup --docker-host unix:///run/podman.sock
    """
    if cleanup:
        removed = remove_leftover_containers(docker_host)
        out.print(escape(f"removed {len(removed)} leftover container(s){': ' + ', '.join(removed) if removed else ''}"))
    out.print(doctor_table(run_checks(fetch=fetch)))


def study_source_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--storage/--study/-o: read a shared study instead of an output folder."""
    options = [
        click.option("--storage", default=None, envvar="GREENTUNE_STORAGE", metavar="URL",
                     help="The study's storage (env GREENTUNE_STORAGE; default: OUTPUT_DIR/study.db): a shared study's "
                          "with --study, else for parameter importance. Never read from summary.json, which records "
                          "it with the password masked."),
        click.option("--study", default=None, metavar="NAME", help="Read this shared study instead of OUTPUT_DIR."),
        click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
                     help="With --study: the folder to write into."),
    ]
    return with_options(fn, options)


@cli.command()
@click.argument("output_dir", type=click.Path(path_type=Path), required=False)
@study_source_options
@handle_errors
def report(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None) -> None:
    """Re-render report.html, report.md and pareto.png from a search's output folder (also while it runs), or from
    a shared study alone (every worker's trials).

    \b
    Example:
      greentune report out/
      GREENTUNE_STORAGE=postgresql://user:PASSWORD@db/greentune greentune report out/
      greentune report --study mlp-h100 -o report/   # the storage from GREENTUNE_STORAGE
    """
    for path in report_command(output_dir, storage, study, output):
        out.print(f"wrote {escape(str(path))}", highlight=False)


@cli.command()
@click.argument("output_dir", type=click.Path(path_type=Path), required=False)
@study_source_options
@click.option("--trial", "trial_number", type=int, required=True, help="Trial number (see trials.csv or the report).")
@click.option("--to", "destination", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: OUTPUT_DIR/<model>/trial-N/config.pbtxt).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Load the config into a local Triton server and run a smoke inference before writing.")
@click.option("--tritonserver", type=click.Path(path_type=Path), default=None, help="tritonserver binary for --verify.")
@click.option("--model-repository", "-r", type=click.Path(path_type=Path), default=None,
              help="The model repository on this machine that --verify loads from (needed with --study: the one a "
                   "shared study names is not used; default otherwise: the one summary.json records).")
@handle_errors
def export(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None, trial_number: int,
           destination: Path | None, verify: bool, tritonserver: Path | None, model_repository: Path | None) -> None:
    """Write any trial's config.pbtxt (for a Pareto point other than the chosen one), from a search's output
    folder or from a shared study alone.

    \b
    Example:
      greentune export out/ --trial 7 --to deploy/mlp/config.pbtxt
      GREENTUNE_STORAGE=... greentune export --study mlp-h100 -o out/ --trial 7 -r model_repository
    """
    with console.status(f"exporting trial {trial_number}…"):
        path = export_command(output_dir, storage, study, output, trial_number, destination, verify, tritonserver,
                              model_repository)
    out.print(f"wrote {escape(str(path))}" + (" (loaded and smoke-tested first)" if verify else ""), highlight=False)


def main() -> None:
    """Entry point of the greentune console script."""
    cli(prog_name="greentune")
