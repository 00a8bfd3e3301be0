"""`greentune compare`: a pipeline gate. Measures a baseline and a candidate config of one model on one server,
interleaved in pairs (A B or B A, the order of each pair drawn at random) so that drift hits both alike, until the
energy-per-inference ratio is resolved against the threshold or the budget runs out; writes compare.md and
compare.json (tuner/comparison.py holds the statistics and the verdict)."""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tuner import paths
from tuner.bench import Bench, LoadPolicy
from tuner.comparison import Comparison, Pair
from tuner.errors import BadInput, GreentuneError, ModelLoadError
from tuner.events import PairMeasured, Progress, emit
from tuner.fileio import atomic_write
from tuner.job import parse_duration
from tuner.measure import InputSource, MeasureSettings
from tuner.meters.select import MeterChoice
from tuner.model_config import ModelConfig, load_model_config, model_dir, read_model_config, to_text
from tuner.objective import Constraints
from tuner.results import Measurement, ensure_writable_dir, write_json
from tuner.run import measurement_parts
from tuner.server.choose import LauncherChoice

MIN_PAIRS = 3


@dataclass(frozen=True)
class ConfigSource:
    """One side of the comparison: the config to load and where it came from (for the report)."""

    config: ModelConfig
    path: str
    text: str


@dataclass(frozen=True)
class CompareJob:
    """What `greentune compare` is asked to do: two configs of one model, one load, one server, the gate's rules."""

    model_repository: Path
    model: str
    baseline: ConfigSource
    candidate: ConfigSource
    output: Path
    settings: MeasureSettings
    load: LoadPolicy
    inputs: InputSource
    meters: MeterChoice
    launchers: LauncherChoice
    constraints: Constraints
    max_regression: float = 0.05
    min_pairs: int = MIN_PAIRS
    max_pairs: int = 10
    budget_s: float = 900.0
    inconclusive_passes: bool = False
    seed: int | None = None

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> CompareJob:
        """The job from compare's flags; every flag and both configs are checked before any server starts."""
        repository, model = flags["model_repository"], flags["model"]
        model_dir(repository, model)
        min_pairs, max_pairs = flags["pairs"], flags["max_pairs"]
        if min_pairs < 2:
            raise BadInput(f"--pairs: expected at least 2 pairs (an interval needs two), got {min_pairs}")
        if max_pairs < min_pairs:
            raise BadInput(f"--max-pairs: expected at least --pairs ({min_pairs}), got {max_pairs}")
        ensure_writable_dir(flags["output"])
        settings, load, inputs, meters = measurement_parts(flags)
        return cls(
            model_repository=repository, model=model,
            baseline=config_source("--baseline", flags["baseline"], repository, model),
            candidate=config_source("--candidate", flags["candidate"], repository, model),
            output=flags["output"], settings=settings, load=load, inputs=inputs, meters=meters,
            launchers=LauncherChoice.from_flags(flags),
            constraints=Constraints(min_throughput_per_s=flags["min_throughput"], max_p99_ms=flags["max_p99_ms"],
                                    max_memory_mb=flags["max_memory_mb"]),
            max_regression=parse_fraction(flags["max_regression"]), min_pairs=min_pairs, max_pairs=max_pairs,
            budget_s=parse_duration(flags["budget"], "--budget"), inconclusive_passes=flags["inconclusive"] == "pass",
            seed=flags["seed"])


def config_source(flag: str, given: Path, repository: Path, model: str) -> ConfigSource:
    """The config a --baseline/--candidate names: a config.pbtxt; a model folder holding one; a second model
    repository whose model files are -r's but for config.pbtxt; a version folder of the model in -r (the model's own
    config, serving that version only). Its name must be the model's."""
    path = Path(given)
    if path.is_dir() and path.name.isdigit() and path.resolve().parent == model_dir(repository, model).resolve():
        config = load_model_config(repository, model)
        del config.version_policy.specific.versions[:]
        config.version_policy.specific.versions.append(int(path.name))
        return ConfigSource(config, str(path), to_text(config))
    if path.is_dir() and (path / model / "config.pbtxt").is_file():  # a second model repository
        _same_model_files(flag, path / model, model_dir(repository, model))
        path = path / model
    if path.is_dir():
        if not (path / "config.pbtxt").is_file():
            raise BadInput(f"{flag} {path}: no config.pbtxt there (give a config.pbtxt, a model folder, or a version "
                           f"folder of {model} in {repository})")
        path = path / "config.pbtxt"
    if not path.is_file():
        raise BadInput(f"{flag} {path}: no such file (give a config.pbtxt, a model folder, or a version folder of "
                       f"{model} in {repository})")
    config, text = read_model_config(path), path.read_text()
    named = ModelConfig()
    text_format.Parse(text, named)  # read_model_config names an unnamed config after its folder; a bare file
    if not named.name:  # (e.g. `git show main:…/config.pbtxt > baseline.pbtxt`) is this model's
        config.name = model
    if config.name != model:
        raise BadInput(f"{flag} {path}: a config for model {config.name!r}, not --model {model}")
    return ConfigSource(config, str(path), text)


def _same_model_files(flag: str, theirs: Path, ours: Path) -> None:
    """A second repository's model may differ from -r's only in config.pbtxt: one server serves -r's model files, so
    another model.py, weights or version folder would be measured as -r's (give a version folder of -r instead)."""
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name != "config.pbtxt" and "__pycache__" not in p.parts}

    mine, other = files(ours), files(theirs)
    if mine != other:
        differ = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
        raise BadInput(f"{flag} {theirs.parent}: its {theirs.name} differs from -r's in {', '.join(differ[:3])}"
                       f"{' …' if len(differ) > 3 else ''}; compare serves -r's model files with each config, so "
                       f"put the candidate's files in a version folder of {ours} and give that folder")


def parse_fraction(text: str) -> float:
    """--max-regression '5%' or '0.05' -> 0.05."""
    value = text.strip()
    try:
        fraction = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise BadInput(f"--max-regression {text}: expected a percentage like 5% (or a fraction like 0.05)") from None
    if not 0 <= fraction < 1:
        raise BadInput(f"--max-regression {text}: expected 0% to 99%")
    return fraction


def compare_command(job: CompareJob, progress: Progress | None = None) -> Comparison:
    """Measure the pairs on one server, then write OUTPUT/compare.md and OUTPUT/compare.json."""
    job.output.mkdir(parents=True, exist_ok=True)
    bench = Bench(job.launchers.launcher(pull_progress=progress), job.model_repository, job.model,
                  job.baseline.config, job.output, job.inputs, job.load, job.settings, job.constraints, job.meters,
                  progress)
    with bench:
        comparison = measure_pairs(job, bench, progress)
    write_json(paths.compare_json_path(job.output), comparison.to_document())
    atomic_write(paths.compare_md_path(job.output), comparison.markdown())
    return comparison


def measure_pairs(job: CompareJob, bench: Bench, progress: Progress | None = None,
                  clock: Any = time.monotonic) -> Comparison:
    """Pairs until the ratio is resolved (after job.min_pairs), job.max_pairs, or the budget would be overrun."""
    order = random.Random(job.seed)
    pairs: list[Pair] = []
    started = clock()
    while True:
        candidate_first = order.random() < 0.5
        if candidate_first:
            candidate = _measure(bench, job.candidate, job)
            baseline = _measure(bench, job.baseline, job)
        else:
            baseline = _measure(bench, job.baseline, job)
            candidate = _measure(bench, job.candidate, job)
        pairs.append(Pair(len(pairs) + 1, candidate_first, baseline, candidate))
        comparison = _comparison(job, pairs, "")
        energy = comparison.energy()
        emit(progress, PairMeasured(len(pairs), "BA" if candidate_first else "AB", energy.ratio, energy.low,
                                    energy.high))
        per_pair = (clock() - started) / len(pairs)
        if len(pairs) < job.min_pairs:
            continue
        if comparison.resolved():
            return _comparison(job, pairs, f"resolved after {len(pairs)} pairs")
        if len(pairs) >= job.max_pairs:
            return _comparison(job, pairs, f"--max-pairs {job.max_pairs} reached")
        if clock() - started + per_pair > job.budget_s:
            return _comparison(job, pairs, f"--budget {job.budget_s:.0f} s would be overrun by another pair "
                                           f"({per_pair:.0f} s each)")


def _measure(bench: Bench, side: ConfigSource, job: CompareJob) -> Measurement:
    """One measurement of one side; a config Triton refuses is bad input naming its flag and file."""
    flag = "--baseline" if side is job.baseline else "--candidate"
    try:
        return bench.measure_config(side.config)
    except ModelLoadError as exc:
        raise BadInput(f"{flag} {side.path}: Triton refused it: {str(exc).splitlines()[0]}") from None
    except GreentuneError as exc:
        raise GreentuneError(f"measuring {flag} {side.path} failed: {str(exc).splitlines()[0]}") from None


def _comparison(job: CompareJob, pairs: list[Pair], stop_reason: str) -> Comparison:
    return Comparison(model=job.model, baseline_path=job.baseline.path, candidate_path=job.candidate.path,
                      baseline_text=job.baseline.text, candidate_text=job.candidate.text, pairs=tuple(pairs),
                      max_regression=job.max_regression, inconclusive_passes=job.inconclusive_passes,
                      constraints=job.constraints, load=job.load.describe(), stop_reason=stop_reason)
