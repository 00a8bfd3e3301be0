"""Click commands: parse flags, call one library function, render with rich, map errors to exit codes."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tuner.errors import EXIT_FAILURE, GreentuneError
from tuner.redact import mask_url, redact
from tuner.results import Measurement, Spread

if TYPE_CHECKING:
    from tuner.bench import LoadPolicy
    from tuner.events import Event, Progress
    from tuner.job import SearchJob, SearchSettings
    from tuner.measure import MeasureSettings
    from tuner.server.base import ServerLauncher

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
    table = Table(title=escape(title), show_header=True, header_style="bold")
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
        table.add_row("[yellow]warning[/]", "", escape(redact(warning)))
    return table


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


def impact_inputs(flags: dict[str, Any], space: Any) -> Any:
    """ImpactInputs from the flags over the search space's impact: block."""
    from tuner.impact import resolve_inputs

    return resolve_inputs({"traffic": flags.get("traffic"), "carbon_intensity": flags.get("carbon_intensity"),
                           "energy_price": flags.get("energy_price"), "currency": flags.get("currency"),
                           "pue": flags.get("pue"), "gpu_hourly_price": flags.get("gpu_hourly_price")},
                          space.impact, space.source)


def build_launcher(flags: dict[str, Any], pull_progress: Progress | None = None) -> ServerLauncher:
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


def measure_settings(flags: dict[str, Any]) -> MeasureSettings:
    """MeasureSettings from the shared load/meter flags."""
    from tuner.measure import MeasureSettings

    return MeasureSettings(warmup_s=flags["warmup"], window_s=flags["window"], max_windows=flags["max_windows"],
                           stability_tolerance=flags["stability"], idle_s=flags["idle_seconds"],
                           energy_accounting=flags["energy_accounting"], max_failure_rate=flags["max_failure_rate"])


def build_load(concurrency: str | None, request_rate: float | None, request_timeout: float,
               allow_auto: bool = False, max_p99_ms: float | None = None, engine: str = "builtin",
               perf_analyzer: Path | None = None) -> LoadPolicy:
    """The load policy from flags: closed loop at concurrency 8 unless told otherwise, or auto under max_p99_ms;
    every request sent by `engine`."""
    from tuner.bench import LoadPolicy
    from tuner.errors import BadInput
    from tuner.load import LoadSpec

    if concurrency == "auto":
        if not allow_auto:
            raise BadInput("--concurrency auto is only for search; give a number of concurrent requests")
        if request_rate is not None:
            raise BadInput("give either --concurrency auto or --request-rate, not both")
        if max_p99_ms is None:
            raise BadInput("--concurrency auto needs --max-p99-ms (the latency each config is driven up to)")
        return LoadPolicy.auto(max_p99_ms, LoadSpec(concurrency=1, request_timeout_s=request_timeout, engine=engine,
                                                     perf_analyzer=perf_analyzer))
    count: int | None = None
    if concurrency is not None:
        try:
            count = int(concurrency)
        except ValueError:
            raise BadInput(f"--concurrency {concurrency}: expected a positive integer or auto") from None
    elif request_rate is None:
        count = 8
    return LoadPolicy(LoadSpec(concurrency=count, request_rate_per_s=request_rate, request_timeout_s=request_timeout,
                               engine=engine, perf_analyzer=perf_analyzer))


def load_engine(flags: dict[str, Any]) -> str:
    """--load-generator resolved (auto: perf_analyzer where found, else builtin); the choice is recorded in every
    measurement's load and printed with the results (not here, so a bad flag stays one line)."""
    from tuner.engines import resolve_engine

    return resolve_engine(flags["load_generator"], flags["perf_analyzer"])


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
    from tuner.bench import Bench
    from tuner.inputs import parse_shape_options
    from tuner.measure import InputSource
    from tuner.meters.select import MeterChoice
    from tuner.model_config import load_model_config, parse_set_options, validate_trial
    from tuner.results import ensure_writable_dir
    from tuner.run import measure_one

    base = load_model_config(flags["model_repository"], flags["model"])
    trial = parse_set_options(flags["settings"])
    ensure_writable_dir(flags["output"])
    validate_trial(base, trial)
    settings = measure_settings(flags)
    engine = load_engine(flags)
    load = build_load(flags["concurrency"], flags["request_rate"], flags["request_timeout"],
                      engine=engine, perf_analyzer=flags["perf_analyzer"])
    inputs = InputSource(parse_shape_options(flags["shape"]), flags["input_data"])
    meters = MeterChoice(flags["energy_meter"], flags["cpu_tdp_watts"], parse_gpus(flags["gpus"]))
    with console.status("starting Triton…") as status:
        launcher = build_launcher(flags, lambda event: status.update(status_text(event)))
        bench = Bench(launcher, flags["model_repository"], flags["model"], base, flags["output"], inputs, load,
                      settings, meters=meters, progress=lambda event: status.update(status_text(event)),
                      idle_config=trial)
        measurement, path = measure_one(bench, trial)
    out.print(measurement_table(measurement, f"{flags['model']}: {trial.describe()} · {_load_text(load.describe())}"))
    if not measurement.stable:
        console.print("[yellow]warning:[/] measurement did not stabilise; raise --max-windows or --window")
    how = " (auto)" if flags["load_generator"] == "auto" else ""
    console.print(f"load generator: {engine}{how}; wrote {escape(str(path))}", highlight=False)


def event_text(event: Event) -> str:
    """One status line for a progress event."""
    from tuner import events

    if isinstance(event, events.WindowMeasured):
        return (f"window {event.index}/{event.max_windows}: {event.throughput_per_s:.1f} infer/s, "
                f"p99 {event.p99_ms:.2f} ms")
    if isinstance(event, events.ModelLoading):
        return f"loading {event.config}"
    if isinstance(event, events.IdleMeasuring):
        return f"measuring idle power for {event.seconds:g} s"
    if isinstance(event, events.EngineStarted):
        return f"load engine: {event.engine}"
    if isinstance(event, events.WarmingUp):
        return f"warming up for {event.seconds:g} s"
    if isinstance(event, events.ConcurrencyProbed):
        return (f"probing concurrency {event.concurrency}: {event.throughput_per_s:.1f} infer/s, "
                f"p99 {event.p99_ms:.2f} ms")
    if isinstance(event, events.TrialStarted):
        return f"trial {event.number}: {event.config}" + (" (baseline)" if event.baseline else "")
    if isinstance(event, events.RepeatStarted):
        return f"repeating trial {event.number}: {event.config}"
    if isinstance(event, events.RepeatFailed):
        return f"repeat of trial {event.number} failed: {event.reason}"
    if isinstance(event, events.ServerRestarted):
        return f"server died; restarted it (restart {event.count})"
    if isinstance(event, events.ImagePulling):
        done = f" {event.current_bytes / 1e6:.0f}/{event.total_bytes / 1e6:.0f} MB" if event.total_bytes else ""
        return f"pulling {event.image}: {event.status} {event.layer}{done}"
    if isinstance(event, events.TrialsRecovered):
        return f"{event.count} trial(s) interrupted by an earlier run will be retried"
    if isinstance(event, events.TrialRetried):
        return f"trial {event.number}: {event.reason}; measuring it once more (a failure of the tool, not the config)"
    return f"trial {event.result.number} finished"


def status_text(event: Event) -> str:
    """event_text made safe for rich: user values escaped, secrets masked."""
    return escape(redact(event_text(event)))


def _load_text(described: dict[str, Any]) -> str:
    engine = f" ({described['engine']})" if described.get("engine") else ""
    if described["mode"] == "auto":
        return f"concurrency auto (p99 <= {described.get('max_p99_ms')} ms){engine}"
    if described["mode"] == "concurrency":
        return f"concurrency {described['concurrency']}{engine}"
    return f"{described['request_rate_per_s']:g} req/s open loop{engine}"


def search_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by search and worker: the space, constraints, budgets, sampler, study and outputs."""
    options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
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
        click.option("--storage", default=None, metavar="URL",
                      help="Optuna storage: sqlite:///, postgresql://, mysql:// or journal:///path/file (default: "
                           "OUTPUT/study.db)."),
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
@server_options
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

    Writes OUTPUT/<model>/config.pbtxt (the objective's best feasible config, loaded and smoke-tested first),
    OUTPUT/summary.json and OUTPUT/trials.csv. Exit status: 0 found a feasible config,
    3 none was feasible, 2 bad input, 1 other failure, 130 interrupted (rerun with --resume).

    \b
    Example:
      greentune search -r model_repository -m mlp --trials 12 --max-p99-ms 20 -o out/
      greentune search -r model_repository -m mlp -c auto --max-p99-ms 50 -o out/ \\
        --traffic 2000 --carbon-intensity 400 --energy-price 0.15 --currency EUR
    """
    from tuner.search_run import run_search_command

    job, settings = _search_job(flags)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("[bold]trial[/]"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"), console=console, transient=False)
    task = bar.add_task("starting Triton…", total=settings.trials)
    launcher = build_launcher(flags, lambda event: bar.update(task, description=status_text(event)))
    state: dict[str, Any] = {"config": "", "best": "none yet"}

    def progress(event: Event) -> None:
        from tuner import events

        if isinstance(event, events.TrialStarted):
            state["config"] = escape(event.config) + (" (baseline)" if event.baseline else "")
            bar.update(task, description=f"{state['config']} · best: {state['best']}")
        elif isinstance(event, events.WindowMeasured):
            bar.update(task, description=f"{state['config']} · window {event.index}: "
                                         f"{event.throughput_per_s:.0f} infer/s · best: {state['best']}")
        elif isinstance(event, events.TrialFinished):
            best = event.best
            if best is not None and best.measurement is not None and job.objective == "throughput":
                state["best"] = f"trial {best.number}: {best.measurement.throughput_per_s.mean:.0f} infer/s"
            elif best is not None and best.measurement is not None:
                state["best"] = (f"trial {best.number}: {best.measurement.inferences_per_j.mean:.2f} infer/J "
                                 f"({best.measurement.energy_source})")
            bar.update(task, completed=event.measured, description=f"best: {state['best']}")
            bar.console.print(trial_line(event.result), highlight=False)
        elif isinstance(event, (events.ServerRestarted, events.TrialsRecovered, events.TrialRetried)):
            bar.console.print(f"[yellow]{status_text(event)}[/]", highlight=False)

    with bar:
        if flags["parallel"] == 1:
            outcome, exported = run_search_command(job, settings, launcher, progress)
        else:
            from tuner.meters import nvml
            from tuner.parallel import plan_slots
            from tuner.search_run import run_parallel_search

            slots, warning = plan_slots(job.gpus, flags["parallel"], nvml.gpu_count(), job.output)
            if warning:
                bar.console.print(f"[yellow]warning:[/] {warning}", highlight=False)
            launchers = [build_launcher({**flags, "gpus": None if slot.gpu is None else str(slot.gpu)})
                         for slot in slots]
            outcome, exported = run_parallel_search(job, settings, slots, launchers, progress)
    _print_search_result(job, outcome, exported)


def _search_job(flags: dict[str, Any]) -> tuple[SearchJob, SearchSettings]:
    from tuner.inputs import parse_shape_options
    from tuner.job import SearchJob, SearchSettings, parse_duration
    from tuner.measure import InputSource
    from tuner.model_config import load_model_config
    from tuner.objective import Constraints
    from tuner.space import builtin_space, builtin_space_names, load_space
    from tuner.storage import Heartbeat

    base = load_model_config(flags["model_repository"], flags["model"])
    name = flags["space_name"]
    builtin = builtin_space(name) if "/" not in name and not name.endswith((".yaml", ".yml")) else None
    if builtin is not None:
        space = builtin
    elif Path(name).is_file():
        space = load_space(Path(name))
    else:
        from tuner.errors import BadInput

        raise BadInput(f"--space {name}: no such file and not a built-in space ({', '.join(builtin_space_names())})")
    impact = impact_inputs(flags, space)
    constraints = Constraints.merge(space.constraints, min_throughput=flags["min_throughput"],
                                    max_p99_ms=flags["max_p99_ms"], max_memory_mb=flags["max_memory_mb"])
    load = build_load(flags["concurrency"], flags["request_rate"], flags["request_timeout"], allow_auto=True,
                      max_p99_ms=constraints.max_p99_ms, engine=load_engine(flags),
                      perf_analyzer=flags["perf_analyzer"])
    measure = measure_settings(flags)
    settings = SearchSettings(trials=flags["trials"], timeout_s=parse_duration(flags["timeout"]) if flags["timeout"]
                              else None, patience=flags["patience"], sampler=flags["sampler"], seed=flags["seed"],
                              storage=flags["storage"], resume=flags.get("resume", False),
                              repeats=flags.get("repeats", 1), study=flags["study"],
                              heartbeat=Heartbeat(flags["heartbeat_interval"], flags["grace_period"]),
                              allow_mixed_hardware=flags["allow_mixed_hardware"],
                              screening=flags.get("screening", True), first_trials=flags.get("first_trials", True))
    from tuner.results import ensure_writable_dir

    ensure_writable_dir(flags["output"])
    job = SearchJob(model_repository=flags["model_repository"], model=flags["model"], base=base, space=space,
                    constraints=constraints, load=load, inputs=InputSource(parse_shape_options(flags["shape"]),
                                                                           flags["input_data"]),
                    measure=measure, output=flags["output"], energy_meter=flags["energy_meter"],
                    cpu_tdp_watts=flags["cpu_tdp_watts"], gpus=parse_gpus(flags["gpus"]),
                    objective=flags["objective"], impact=impact)
    return job, settings


@cli.command()
@server_options
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
    from tuner.search_run import run_worker_command

    if not flags["study"] or not flags["storage"]:
        from tuner.errors import BadInput

        raise BadInput("worker needs --storage URL and --study NAME (the shared study to join)")
    job, settings = _search_job(flags)
    launcher = build_launcher(flags)

    def progress(event: Event) -> None:
        from tuner import events

        if isinstance(event, events.TrialFinished):
            console.print(trial_line(event.result), highlight=False)
        elif isinstance(event, events.TrialStarted):
            console.print(f"trial {event.number:>3} started  {escape(event.config)}", highlight=False)
        elif isinstance(event, (events.ServerRestarted, events.TrialsRecovered, events.TrialRetried)):
            console.print(f"[yellow]{status_text(event)}[/]", highlight=False)

    outcome, measured_here = run_worker_command(job, settings, launcher, progress)
    from tuner import paths

    html, markdown, _ = paths.report_paths(job.output)
    out.print(escape(f"stopped: {outcome.stop_reason}; this worker measured {len(measured_here)} of the "
                     f"{len(outcome.results)} configs in study {settings.study} ({mask_url(outcome.storage_url)}); "
                     f"wrote {paths.summary_path(job.output)}, {html}, {markdown}"), highlight=False)


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
        out.print(escape(f"removed {len(removed)} leftover container(s){': ' + ', '.join(removed) if removed else ''}"))
    table = Table(title="greentune doctor", header_style="bold")
    for column in ("area", "what", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in run_checks(fetch=fetch):
        status = "[green]available[/]" if check.available else "[yellow]unavailable[/]"
        table.add_row(escape(check.area), escape(check.name), status, escape(redact(check.detail)), escape(check.fix))
    out.print(table)


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


def source_folder(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None) -> Path:
    """OUTPUT_DIR, or a folder filled from the shared study (--storage URL --study NAME -o DIR)."""
    from tuner.errors import BadInput

    if study is None:  # an output folder (--storage, if given, is only where its study lives)
        if output_dir is None:
            raise BadInput("give OUTPUT_DIR (a search's --output folder) or --storage URL --study NAME -o DIR")
        if output is not None:
            raise BadInput("-o is only used with --storage and --study (OUTPUT_DIR is written in place)")
        return output_dir
    if not storage or output_dir is not None:
        raise BadInput("give --storage URL and --study NAME together, with -o DIR instead of OUTPUT_DIR")
    from tuner.search_run import materialize_study

    return materialize_study(storage, study, output or Path("greentune-out"))


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
      greentune report --storage "$GREENTUNE_STORAGE" --study mlp-h100 -o report/
    """
    from tuner.report import write_reports

    folder = source_folder(output_dir, storage, study, output)
    for path in write_reports(str(folder), storage=storage):
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
@handle_errors
def export(output_dir: Path | None, storage: str | None, study: str | None, output: Path | None, trial_number: int,
           destination: Path | None, verify: bool, tritonserver: Path | None) -> None:
    """Write any trial's config.pbtxt (for a Pareto point other than the chosen one), from a search's output
    folder or from a shared study alone.

    \b
    Example:
      greentune export out/ --trial 7 --to deploy/mlp/config.pbtxt
      greentune export --storage "$GREENTUNE_STORAGE" --study mlp-h100 -o out/ --trial 7 --no-verify
    """
    output_dir = source_folder(output_dir, storage, study, output)
    from tuner.export import export_trial
    from tuner.server import LocalLauncher

    launcher: ServerLauncher | None = LocalLauncher(tritonserver) if verify else None
    with console.status(f"exporting trial {trial_number}…"):
        path = export_trial(output_dir, trial_number, destination, launcher)
    out.print(f"wrote {escape(str(path))}" + (" (loaded and smoke-tested first)" if verify else ""), highlight=False)


def trial_line(result: Any) -> str:
    """One line per finished trial: status, config, inferences per joule with spread and source, p99, throughput."""
    head = f"trial {result.number:>3} "
    if result.failed:
        status = "[red]failed[/] (load tool, twice)" if result.tool_failure else "[red]failed[/]   "
        return f"{head}{status} {escape(result.config.describe())} · {escape(redact(result.failure_reason or ''))}"
    m = result.measurement
    if result.screened:  # the reason says after how many windows and why, with units
        return (f"{head}[blue]screened[/]   {escape(result.config.describe())} · "
                f"{escape(redact(result.screened_reason or ''))}")
    status = "[green]feasible[/]  " if result.feasible else "[yellow]infeasible[/]"
    return (f"{head}{status} {escape(result.config.describe())} · {fmt_spread(m.inferences_per_j, 2, 'infer/J')} "
            f"[{m.energy_source}] · p99 {m.p99_ms.mean:.2f} ms · {m.throughput_per_s.mean:.0f} infer/s")


def _print_search_result(job: Any, outcome: Any, exported: Path | None) -> None:
    from tuner import paths
    from tuner.errors import NoFeasibleConfig
    from tuner.objective import best_trial, fastest_trial, price_of_speed
    from tuner.outputs import savings

    out.print(escape(f"stopped: {outcome.stop_reason}; {len(outcome.results)} configs measured "
                     f"({outcome.duplicates} duplicate proposals reused); load: {_load_text(job.load_description())}"),
              highlight=False)
    if outcome.best is None:
        raise NoFeasibleConfig(_no_feasible_message(outcome, job))
    best = outcome.best
    picked = "fastest" if job.objective == "throughput" else "most efficient"
    out.print(f"[bold green]best:[/] trial {best.number} ({picked}, --objective {job.objective}): "
              f"{escape(best.config.describe())}", highlight=False)
    out.print(measurement_table(best.measurement, f"best config (trial {best.number})"))
    saved = savings(best, outcome.baseline)
    if saved is not None:
        tie = " (within the measurement spread: a tie)" if saved["within_spread"] else ""
        out.print(f"vs baseline (trial {outcome.baseline.number}, the model's own config): "
                  f"{saved['energy_saved_per_inference_j'] * 1000:.3f} mJ per inference saved "
                  f"({saved['energy_saved_percent']:.1f}%, {saved['energy_source']}){tie}; "
                  f"p99 {saved['p99_change_ms']:+.2f} ms; throughput {saved['throughput_change_percent']:+.1f}%",
                  highlight=False)
    price = price_of_speed(best_trial(outcome.results), fastest_trial(outcome.results))
    if price is not None:
        out.print(price_text(price), highlight=False)
    _print_impact(job, outcome)
    html, markdown, _ = paths.report_paths(job.output)
    out.print(escape(f"wrote {exported}, {paths.summary_path(job.output)}, {paths.trials_csv_path(job.output)}, "
                     f"{html}, {markdown}"), highlight=False)


def price_text(price: Any) -> str:
    """One line: the fastest feasible config against the most efficient one, or that they are the same config."""
    if price.same_config:
        return (f"most efficient and fastest feasible config: the same config (trial {price.efficient_trial}); "
                "speed costs no extra energy here")
    energy = ("energy not metered" if price.extra_energy_per_inference_mj is None else
              f"{price.extra_energy_per_inference_mj:+.3f} mJ per inference, {price.extra_power_w:+.1f} W "
              f"({price.energy_source}, {price.energy_accounting} energy)")
    return (f"price of speed: the fastest feasible config (trial {price.fastest_trial}) runs "
            f"{price.extra_throughput_per_s:+.0f} infer/s vs the most efficient (trial {price.efficient_trial}) "
            f"at {energy}")


def _print_impact(job: Any, outcome: Any) -> None:
    """The annual sentence (with --traffic) or per-million figures of the chosen config, when impact inputs are given."""
    from tuner.impact import annual_summary, significant, trial_per_million

    inputs = job.impact
    if not inputs.stated():
        return
    yearly = annual_summary(outcome.results, outcome.best, outcome.baseline, inputs)
    if yearly is not None and yearly.get("sentence"):
        out.print(f"[bold]per year:[/] {yearly['sentence']}", highlight=False)
        return
    figures = trial_per_million(outcome.best, inputs)
    if figures is not None:
        extra = "".join([f", {significant(figures.carbon_g)} g CO2e" if figures.carbon_g is not None else "",
                         f", {significant(figures.energy_cost)} {inputs.currency_label} of energy"
                         if figures.energy_cost is not None else ""])
        out.print(f"per million inferences (trial {outcome.best.number}): {significant(figures.energy_kwh)} kWh{extra} "
                  f"({', '.join(figures.made_from)}); give --traffic for yearly figures", highlight=False)


def _no_feasible_message(outcome: Any, job: Any) -> str:
    from tuner.objective import closest_trial

    closest = closest_trial(outcome.results)
    from tuner import paths

    where = f"; summary in {paths.summary_path(job.output)}"
    if closest is None:
        tool = sum(1 for r in outcome.results if r.tool_failure)
        lost = f"; {tool} of them the load tool's failure, not the config's" if tool else ""
        return f"no config could be measured (all {len(outcome.results)} failed{lost}){where}"
    result, constraint = closest
    return (f"no feasible config among {len(outcome.results)}; closest was trial {result.number} "
            f"({result.config.describe()}), which breaks {constraint} by {result.violations[constraint]:.0%}{where}")


def main() -> None:
    """Entry point of the greentune console script."""
    cli(prog_name="greentune")
