"""Click commands: parse flags, call one library function, render with rich, map errors to exit codes."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tuner.errors import EXIT_FAILURE, GreentuneError
from tuner.results import Measurement, Spread

console = Console(stderr=True)
out = Console()


class Interrupted(KeyboardInterrupt):
    """Raised by the SIGTERM handler so cleanup runs exactly as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Interrupted()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn GreentuneErrors into one line on stderr and their exit code; Ctrl-C/SIGTERM into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except GreentuneError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] server stopped; rerun with --resume to continue", highlight=False)
            sys.exit(130)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            console.print(f"[bold red]error:[/] {where}{exc.strerror or exc}", highlight=False)
            sys.exit(EXIT_FAILURE)
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def fmt_spread(spread: Spread, digits: int = 1, unit: str = "") -> str:
    """'123.4 ± 5.6 unit (95% CI, n=3)': every repeated figure carries its spread."""
    if spread.n == 0:
        return "n/a"
    unit_text = f" {unit}" if unit else ""
    if spread.n < 2:
        return f"{spread.mean:.{digits}f}{unit_text} (n=1, no spread)"
    return f"{spread.mean:.{digits}f} ± {spread.ci95:.{digits}f}{unit_text} (95% CI, n={spread.n})"


def measurement_table(m: Measurement, title: str) -> Table:
    """A rich table of one measurement, every figure with unit and source."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("source / note")
    engine = f"load generator: {m.load.get('engine', 'builtin')}"
    table.add_row("throughput", fmt_spread(m.throughput_per_s, 1, "infer/s"), engine)
    table.add_row("latency p50 / p95", f"{m.p50_ms:.2f} / {m.p95_ms:.2f} ms",
                  f"all requests in measured windows ({engine})")
    table.add_row("latency p99", fmt_spread(m.p99_ms, 2, "ms"), f"per window ({engine})")
    if m.energy_j is not None:
        domains = ", ".join(f"{k} {v:.1f} J" for k, v in m.energy_domains_j.items())
        table.add_row("energy", f"{m.total_energy_j or m.energy_j:.1f} J over {m.duration_s:.1f} s",
                      f"{m.energy_source} ({domains})")
        if m.idle_power_w is not None:
            table.add_row("idle power", f"{m.idle_power_w:.1f} W", f"{m.energy_source}, server up, no load")
        if m.energy_accounting == "dynamic":
            table.add_row("dynamic energy", f"{m.energy_j:.1f} J", "idle power x time subtracted")
        table.add_row("energy per inference", f"{(m.energy_per_inference_j or 0) * 1000:.3f} mJ", m.energy_source)
        table.add_row("inferences per joule", fmt_spread(m.inferences_per_j, 2, "infer/J"), m.energy_source)
    else:
        table.add_row("energy", "not measured", m.energy_source)
    memory = f"{m.memory_mb:.0f} MB" if m.memory_mb is not None else "not measured"
    table.add_row("server memory (peak)", memory, m.memory_source)
    table.add_row("requests", f"{m.success_count} ok, {m.failure_count} failed", f"{m.failure_rate:.1%} failed")
    table.add_row("stability", "stable" if m.stable else "UNSTABLE", f"{len(m.windows)} final windows")
    for warning in m.warnings:
        table.add_row("[yellow]warning[/]", "", warning)
    return table


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="greentune")
def cli() -> None:
    """greentune: find the Triton serving config with the most inferences per joule.

    \b
    Measure one config:   greentune measure --model-repository model_repository --model mlp --set instance_count=2
    Search for the best:  greentune search --model-repository model_repository --model mlp --trials 12 --output out/
    """


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags naming the model and how to run Triton."""
    options = [
        click.option("--model-repository", "-r", required=True, type=click.Path(path_type=Path),
                     help="Triton model repository (folder of model folders)."),
        click.option("--model", "-m", required=True, help="Name of the model to tune (a folder in the repository)."),
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
    for option in reversed(options):
        fn = option(fn)
    return fn


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
                     help="Seconds per measurement window (default 2; 10 with NVML, never below 5 with NVML)."),
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
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_launcher(flags: dict[str, Any], pull_progress: Any = None) -> Any:
    """The launcher the flags ask for; flags that do not apply to it are an error, not silently ignored."""
    from tuner.errors import BadInput
    from tuner.server import DockerLauncher, LocalLauncher, RemoteLauncher
    from tuner.server.docker import DEFAULT_IMAGE

    launcher, tritonserver, url = flags["launcher"], flags["tritonserver"], flags["url"]
    ready_timeout, gpus = flags["ready_timeout"], parse_gpus(flags["gpus"])
    if launcher != "docker":
        for flag, value in (("--image", flags["image"]), ("--docker-host", flags["docker_host"])):
            if value is not None:
                raise BadInput(f"{flag} is only used with --launcher docker")
    if launcher == "docker":
        if tritonserver is not None or url:
            raise BadInput("--tritonserver and --url are not used with --launcher docker (give --image)")
        return DockerLauncher(image=flags["image"] or DEFAULT_IMAGE, docker_host=flags["docker_host"],
                              gpus=gpus, all_gpus=flags["gpus"] == "all", shm_size=flags["shm_size"],
                              network=flags["network"], ready_timeout_s=ready_timeout, pull_progress=pull_progress)

    if launcher == "remote":
        if not url:
            raise BadInput("--launcher remote needs --url http://HOST:PORT of a running server")
        if tritonserver is not None:
            raise BadInput("--tritonserver is only used with --launcher local")
        return RemoteLauncher(url, ready_timeout_s=ready_timeout)
    if url:
        raise BadInput("--url is only used with --launcher remote")
    if flags.get("ports") and launcher != "local":
        raise BadInput("--ports is only used with --launcher local")
    return LocalLauncher(tritonserver, ready_timeout_s=ready_timeout, gpus=gpus, ports=parse_ports(flags.get("ports")))


def parse_ports(text: str | None) -> tuple[int, int, int] | None:
    """--ports 8000,8001,8002 -> (8000, 8001, 8002)."""
    from tuner.errors import BadInput

    if not text:
        return None
    try:
        ports = tuple(int(p) for p in text.split(","))
        if len(ports) != 3 or len(set(ports)) != 3 or not all(1024 <= p <= 65535 for p in ports):
            raise ValueError
    except ValueError:
        raise BadInput(f"--ports {text}: expected three distinct ports from 1024 to 65535: HTTP,GRPC,METRICS") from None
    return ports[0], ports[1], ports[2]


def parse_gpus(text: str | None) -> list[int] | None:
    """--gpus 0,1 -> [0, 1]; all (or none given) -> None, meaning every GPU."""
    from tuner.errors import BadInput

    if text is None or text == "all":
        return None
    try:
        gpus = [int(part) for part in text.split(",")]
        if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
            raise ValueError
    except ValueError:
        raise BadInput(f"--gpus {text}: expected distinct GPU indices, e.g. 0,1") from None
    return gpus


def measure_settings(flags: dict[str, Any]) -> Any:
    """MeasureSettings from the shared load/meter flags."""
    from tuner.measure import MeasureSettings

    return MeasureSettings(warmup_s=flags["warmup"], window_s=flags["window"], max_windows=flags["max_windows"],
                           stability_tolerance=flags["stability"], idle_s=flags["idle_seconds"],
                           energy_accounting=flags["energy_accounting"], max_failure_rate=flags["max_failure_rate"])


def build_load(concurrency: str | None, request_rate: float | None, request_timeout: float,
               allow_auto: bool = False, engine: str = "builtin", perf_analyzer: Path | None = None) -> Any:
    """LoadSpec from flags (closed loop at concurrency 8 unless told otherwise); None means --concurrency auto."""
    from tuner.errors import BadInput
    from tuner.load import LoadSpec

    if concurrency == "auto":
        if not allow_auto:
            raise BadInput("--concurrency auto is only for search; give a number of concurrent requests")
        if request_rate is not None:
            raise BadInput("give either --concurrency auto or --request-rate, not both")
        return None
    count: int | None = None
    if concurrency is not None:
        try:
            count = int(concurrency)
        except ValueError:
            raise BadInput(f"--concurrency {concurrency}: expected a positive integer or auto") from None
    elif request_rate is None:
        count = 8
    return LoadSpec(concurrency=count, request_rate_per_s=request_rate, request_timeout_s=request_timeout,
                    engine=engine, perf_analyzer=perf_analyzer)


def load_engine(flags: dict[str, Any]) -> str:
    """--load-generator resolved (auto: perf_analyzer where found, else builtin), announced on stderr."""
    from tuner.engines import resolve_engine

    engine = resolve_engine(flags["load_generator"], flags["perf_analyzer"])
    how = " (auto)" if flags["load_generator"] == "auto" else ""
    console.print(f"load generator: {engine}{how}", highlight=False)
    return engine


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
    from tuner.inputs import parse_shape_options
    from tuner.measure import InputSource
    from tuner.model_config import load_model_config, parse_set_options
    from tuner.results import ensure_writable_dir
    from tuner.run import measure_one

    base = load_model_config(flags["model_repository"], flags["model"])
    trial = parse_set_options(flags["settings"])
    ensure_writable_dir(flags["output"])
    from tuner.model_config import validate_trial

    validate_trial(base, trial)
    settings = measure_settings(flags)
    load = build_load(flags["concurrency"], flags["request_rate"], flags["request_timeout"],
                      engine=load_engine(flags), perf_analyzer=flags["perf_analyzer"])
    inputs = InputSource(parse_shape_options(flags["shape"]), flags["input_data"])
    gpus = parse_gpus(flags["gpus"])
    with console.status("starting Triton…") as status:
        launcher = build_launcher(flags, lambda event, data: status.update(_pull_text(data)))
        def progress(event: str, data: dict[str, Any]) -> None:
            if event == "window":
                status.update(f"window {data['index']}/{data['max']}: {data['throughput_per_s']:.1f} infer/s, "
                              f"p99 {data['p99_ms']:.2f} ms")
            else:
                status.update(f"{event}: {data}")

        measurement, path = measure_one(
            model_repository=flags["model_repository"], model=flags["model"], base=base, trial=trial,
            launcher=launcher, load=load, inputs=inputs, settings=settings, output=flags["output"],
            energy_meter=flags["energy_meter"], cpu_tdp_watts=flags["cpu_tdp_watts"], gpus=gpus, progress=progress,
        )
    out.print(measurement_table(measurement, f"{flags['model']}: {trial.describe()} · {_load_text(load)}"))
    if not measurement.stable:
        console.print("[yellow]warning:[/] measurement did not stabilise; raise --max-windows or --window")
    console.print(f"wrote {path}", highlight=False)


def _pull_text(data: dict[str, Any]) -> str:
    detail = data.get("progressDetail") or {}
    done = f" {detail['current'] / 1e6:.0f}/{detail['total'] / 1e6:.0f} MB" if detail.get("total") else ""
    return f"pulling {data['image']}: {data.get('status') or ''} {data.get('id') or ''}{done}"


def _load_text(load: Any) -> str:
    described = load if isinstance(load, dict) else load.describe()
    if described["mode"] == "auto":
        return f"concurrency auto (p99 <= {described.get('max_p99_ms')} ms)"
    engine = f" ({described['engine']})" if described.get("engine") else ""
    if described["mode"] == "concurrency":
        return f"concurrency {described['concurrency']}{engine}"
    return f"{described['request_rate_per_s']:g} req/s open loop{engine}"


@cli.command()
@server_options
@load_options
@click.option("--space", "space_name", default="default", show_default=True,
              help="Search space: a YAML file, or default, cpu or gpu from search_spaces/.")
@click.option("--min-throughput", type=float, default=None, help="Constraint: at least this many infer/s.")
@click.option("--max-p99-ms", type=float, default=None, help="Constraint: p99 latency at most this many ms.")
@click.option("--max-memory-mb", type=float, default=None,
              help="Constraint: server memory at most this many MB (GPU memory where measured, else server RSS).")
@click.option("--trials", "-n", type=int, default=12, show_default=True, help="Configs to measure (baseline included).")
@click.option("--timeout", default=None, help="Stop starting trials after this long, e.g. 30m, 1h, 90s.")
@click.option("--patience", type=int, default=None, help="Stop after this many trials without improvement.")
@click.option("--sampler", type=click.Choice(["tpe", "gp", "grid", "random"]), default="tpe", show_default=True,
              help="Optuna sampler (gp needs: pip install 'greentune[gp]').")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed.")
@click.option("--storage", default=None, help="Optuna storage URL for a shared study (default: OUTPUT/study.db).")
@click.option("--resume", is_flag=True, help="Continue the study in OUTPUT (or --storage) to --trials configs.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Re-measure the top 3 configs until each has N measurements, then choose by their pooled mean.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("greentune-out"), show_default=True,
              help="Folder for config.pbtxt, summary.json, trials.csv, the study and logs.")
@handle_errors
def search(**flags: Any) -> None:
    """Search serving configs for the most inferences per joule within the constraints.

    Writes OUTPUT/<model>/config.pbtxt (best feasible config, loaded and smoke-tested first),
    OUTPUT/summary.json and OUTPUT/trials.csv. Exit status: 0 found a feasible config,
    3 none was feasible, 2 bad input, 1 other failure, 130 interrupted (rerun with --resume).

    \b
    Example:
      greentune search -r model_repository -m mlp --trials 12 --max-p99-ms 20 -o out/
    """
    from tuner.search_run import run_search_command

    job, settings = _search_job(flags)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]trial[/]"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=False)
    task = bar.add_task("starting Triton…", total=settings.trials)
    launcher = build_launcher(flags, lambda event, data: bar.update(task, description=_pull_text(data)))
    state: dict[str, Any] = {"config": "", "best": "none yet"}

    def progress(event: str, data: dict[str, Any]) -> None:
        if event == "trial_start":
            state["config"] = data["config"] + (" (baseline)" if data["baseline"] else "")
            bar.update(task, description=f"{state['config']} · best: {state['best']}")
        elif event == "window":
            bar.update(task, description=f"{state['config']} · window {data['index']}: "
                                         f"{data['throughput_per_s']:.0f} infer/s · best: {state['best']}")
        elif event == "trial_end":
            result, best = data["result"], data["best"]
            if best is not None and best.measurement is not None:
                state["best"] = (f"trial {best.number}: {best.measurement.inferences_per_j.mean:.2f} infer/J "
                                 f"({best.measurement.energy_source})")
            bar.update(task, completed=data["measured"], description=f"best: {state['best']}")
            bar.console.print(trial_line(result), highlight=False)
        elif event == "server_restart":
            bar.console.print(f"[yellow]server died; restarted it (restart {data['count']})[/]")
        elif event == "recovered":
            bar.console.print(f"[yellow]{data['count']} trial(s) interrupted by an earlier run will be retried[/]")

    with bar:
        outcome, exported = run_search_command(job, settings, launcher, progress)
    _print_search_result(job, outcome, exported)


def _search_job(flags: dict[str, Any]) -> Any:
    from tuner.inputs import parse_shape_options
    from tuner.measure import InputSource
    from tuner.model_config import load_model_config
    from tuner.objective import Constraints
    from tuner.space import builtin_space_path, load_space
    from tuner.study import SearchJob, SearchSettings, parse_duration

    base = load_model_config(flags["model_repository"], flags["model"])
    name = flags["space_name"]
    path = builtin_space_path(name) if "/" not in name and not name.endswith((".yaml", ".yml")) else Path(name)
    if path is None:
        from tuner.errors import BadInput

        raise BadInput(f"--space {name}: no such file and not a built-in space (default, cpu, gpu)")
    space = load_space(path)
    constraints = Constraints.merge(space.constraints, min_throughput=flags["min_throughput"],
                                    max_p99_ms=flags["max_p99_ms"], max_memory_mb=flags["max_memory_mb"])
    engine = load_engine(flags)
    load = build_load(flags["concurrency"], flags["request_rate"], flags["request_timeout"], allow_auto=True,
                      engine=engine, perf_analyzer=flags["perf_analyzer"])
    if load is None and constraints.max_p99_ms is None:
        from tuner.errors import BadInput

        raise BadInput("--concurrency auto needs --max-p99-ms (the latency each config is driven up to)")
    measure = measure_settings(flags)
    settings = SearchSettings(trials=flags["trials"], timeout_s=parse_duration(flags["timeout"]) if flags["timeout"]
                              else None, patience=flags["patience"], sampler=flags["sampler"], seed=flags["seed"],
                              storage=flags["storage"], resume=flags["resume"], repeats=flags["repeats"])
    from tuner.results import ensure_writable_dir

    ensure_writable_dir(flags["output"])
    job = SearchJob(model_repository=flags["model_repository"], model=flags["model"], base=base, space=space,
                    constraints=constraints, load=load, inputs=InputSource(parse_shape_options(flags["shape"]),
                                                                           flags["input_data"]),
                    measure=measure, output=flags["output"], energy_meter=flags["energy_meter"],
                    cpu_tdp_watts=flags["cpu_tdp_watts"], gpus=parse_gpus(flags["gpus"]), engine=engine,
                    perf_analyzer=flags["perf_analyzer"])
    return job, settings


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
    from tuner.doctor import run_checks

    if cleanup:
        from tuner.server.docker import docker_client, remove_leftovers

        client = docker_client(docker_host)
        removed = remove_leftovers(client)
        client.close()
        out.print(f"removed {len(removed)} leftover container(s){': ' + ', '.join(removed) if removed else ''}")
    table = Table(title="greentune doctor", header_style="bold")
    for column in ("area", "what", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in run_checks(fetch=fetch):
        status = "[green]available[/]" if check.available else "[yellow]unavailable[/]"
        table.add_row(check.area, check.name, status, check.detail, check.fix)
    out.print(table)


@cli.command()
@click.argument("output_dir", type=click.Path(path_type=Path))
@handle_errors
def report(output_dir: Path) -> None:
    """Re-render report.html, report.md and pareto.png from a search's output folder (also while it runs).

    \b
    Example:
      greentune report out/
    """
    from tuner.report import write_reports

    for path in write_reports(str(output_dir)):
        out.print(f"wrote {path}", highlight=False)


@cli.command()
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.option("--trial", "trial_number", type=int, required=True, help="Trial number (see trials.csv or the report).")
@click.option("--to", "destination", type=click.Path(path_type=Path), default=None,
              help="Where to write (default: OUTPUT_DIR/<model>/trial-N/config.pbtxt).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Load the config into a local Triton server and run a smoke inference before writing.")
@click.option("--tritonserver", type=click.Path(path_type=Path), default=None, help="tritonserver binary for --verify.")
@handle_errors
def export(output_dir: Path, trial_number: int, destination: Path | None, verify: bool,
           tritonserver: Path | None) -> None:
    """Write any trial's config.pbtxt (for a Pareto point other than the chosen one).

    \b
    Example:
      greentune export out/ --trial 7 --to deploy/mlp/config.pbtxt
    """
    from tuner.export import export_trial
    from tuner.server import LocalLauncher

    launcher = LocalLauncher(tritonserver) if verify else None
    with console.status(f"exporting trial {trial_number}…"):
        path = export_trial(output_dir, trial_number, destination, launcher)
    out.print(f"wrote {path}" + (" (loaded and smoke-tested first)" if verify else ""), highlight=False)


def trial_line(result: Any) -> str:
    """One line per finished trial: status, config, inferences per joule with spread and source, p99, throughput."""
    head = f"trial {result.number:>3} "
    if result.failed:
        return f"{head}[red]failed[/]    {result.config.describe()} · {result.failure_reason}"
    m = result.measurement
    status = "[green]feasible[/]  " if result.feasible else "[yellow]infeasible[/]"
    return (f"{head}{status} {result.config.describe()} · {fmt_spread(m.inferences_per_j, 2, 'infer/J')} "
            f"[{m.energy_source}] · p99 {m.p99_ms.mean:.2f} ms · {m.throughput_per_s.mean:.0f} infer/s")


def _print_search_result(job: Any, outcome: Any, exported: Path | None) -> None:
    from tuner.errors import NoFeasibleConfig
    from tuner.outputs import savings

    out.print(f"stopped: {outcome.stop_reason}; {len(outcome.results)} configs measured "
              f"({outcome.duplicates} duplicate proposals reused); load: {_load_text(job.load_description())}",
              highlight=False)
    if outcome.best is None:
        raise NoFeasibleConfig(_no_feasible_message(outcome, job))
    best = outcome.best
    out.print(f"[bold green]best:[/] trial {best.number}: {best.config.describe()}", highlight=False)
    out.print(measurement_table(best.measurement, f"best config (trial {best.number})"))
    saved = savings(best, outcome.baseline)
    if saved is not None:
        tie = " (within the measurement spread: a tie)" if saved["within_spread"] else ""
        out.print(f"vs baseline (trial {outcome.baseline.number}, the model's own config): "
                  f"{saved['energy_saved_per_inference_j'] * 1000:.3f} mJ per inference saved "
                  f"({saved['energy_saved_percent']:.1f}%, {saved['energy_source']}){tie}; "
                  f"p99 {saved['p99_change_ms']:+.2f} ms; throughput {saved['throughput_change_percent']:+.1f}%",
                  highlight=False)
    out.print(f"wrote {exported}, {job.output / 'summary.json'}, {job.output / 'trials.csv'}, "
              f"{job.output / 'report.html'}, {job.output / 'report.md'}", highlight=False)


def _no_feasible_message(outcome: Any, job: Any) -> str:
    from tuner.objective import closest_trial

    closest = closest_trial(outcome.results)
    where = f"; summary in {job.output / 'summary.json'}"
    if closest is None:
        return f"no config could be measured (all {len(outcome.results)} failed){where}"
    result, constraint = closest
    return (f"no feasible config among {len(outcome.results)}; closest was trial {result.number} "
            f"({result.config.describe()}), which breaks {constraint} by {result.violations[constraint]:.0%}{where}")


def main() -> None:
    """Entry point of the greentune console script."""
    cli(prog_name="greentune")
