"""`greentune compare`: a pipeline gate. Measures a baseline and a candidate config of one model on one server,
interleaved in pairs (A B or B A, the order of each pair drawn at random) so that drift hits both alike, until the
energy-per-inference ratio is resolved against the threshold or the budget runs out; writes compare.md and
compare.json (tuner/comparison.py holds the statistics and the verdict). With --models FILE each side is a set: every
model of the set loaded with that side's config and driven at its own load, gated on the set's energy per inference."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from tuner import paths
from tuner.bench import Bench, LoadPolicy
from tuner.compare_words import render_markdown
from tuner.comparison import Comparison, Pair, SetMember
from tuner.errors import BadInput, GreentuneError, ModelLoadError
from tuner.events import PairMeasured, Progress, emit
from tuner.fileio import atomic_write
from tuner.job import parse_duration
from tuner.measure import Drive, InputSource, MeasureSettings, load_trial, measure_set
from tuner.meters.select import MeterChoice
from tuner.model_config import (
    ModelConfig,
    SetBase,
    load_model_config,
    model_dir,
    own_config,
    read_model_config,
    to_text,
    trial_of,
)
from tuner.modelset import members_from_flags
from tuner.objective import Constraints
from tuner.results import Measurement, SetConfig, ensure_writable_dir, write_json
from tuner.run import measurement_parts
from tuner.server.choose import LauncherChoice, parse_gpus
from tuner.set_bench import Member, SetBench

MIN_PAIRS = 3


@dataclass(frozen=True)
class ConfigSource:
    """One side of the comparison: the config to load and where it came from (for the report)."""

    config: ModelConfig
    path: str
    text: str


@dataclass(frozen=True)
class SetSource:
    """One side of a set's comparison (--models): every model's whole config, read from a folder holding
    <model>/config.pbtxt for each (a model repository, or a search's output folder)."""

    config: SetBase
    path: str
    # (model, its config as read, in protobuf's text format: a repository's hand-written config and a search's
    # rendered one then differ only where the configs do), in the set's order
    texts: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        """Every model's config.pbtxt, each after a '# MODEL/config.pbtxt' comment line."""
        return "".join(f"# {model}/config.pbtxt\n{text.rstrip()}\n" for model, text in self.texts)


@dataclass(frozen=True)
class CompareJob:
    """What `greentune compare` is asked to do: two configs of one model (or two sets of configs, one per model of a
    set), one load (a set: each model's own), one server, the gate's rules."""

    model_repository: Path
    model: str  # a set's: MODEL+MODEL...
    baseline: ConfigSource | SetSource
    candidate: ConfigSource | SetSource
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
    # A set (--models): each model with the baseline's config as its base, its load, inputs and limits from the file;
    # `constraints` are then the server's (memory).
    members: tuple[Member, ...] = ()

    @classmethod
    def from_flags(cls, flags: dict[str, Any]) -> CompareJob:
        """The job from compare's flags; every flag and both configs are checked before any server starts."""
        if flags.get("models"):
            return cls.from_set_flags(flags)
        repository, model = flags["model_repository"], flags["model"]
        if not model:
            raise BadInput("--model: give --model NAME (one model) or --models FILE (a set of models on one server)")
        model_dir(repository, model)
        min_pairs, max_pairs = _pair_counts(flags)
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
            **_gate_rules(flags, min_pairs, max_pairs))

    @classmethod
    def from_set_flags(cls, flags: dict[str, Any]) -> CompareJob:
        """The job of --models FILE: each model's load, inputs and limits from the file, both sides folders holding
        every model's config; checked before any server starts."""
        repository = flags["model_repository"]
        members, memory = members_from_flags(flags, "default")
        min_pairs, max_pairs = _pair_counts(flags)
        baseline = set_source("--baseline", flags["baseline"], repository, members)
        candidate = set_source("--candidate", flags["candidate"], repository, members)
        ensure_writable_dir(flags["output"])
        return cls(
            model_repository=repository, model="+".join(m.model for m in members), baseline=baseline,
            candidate=candidate, output=flags["output"], settings=MeasureSettings.from_flags(flags),
            load=LoadPolicy(members[0].load), inputs=InputSource({}),
            meters=MeterChoice(flags["energy_meter"], flags["cpu_tdp_watts"], parse_gpus(flags["gpus"])),
            launchers=LauncherChoice.from_flags(flags),
            constraints=Constraints(max_memory_mb=flags["max_memory_mb"] if flags["max_memory_mb"] is not None
                                    else memory),
            members=tuple(replace(m, base=baseline.config.of(m.model)) for m in members),
            **_gate_rules(flags, min_pairs, max_pairs))

    def load_description(self) -> dict[str, Any]:
        """The load every pair ran under (a set: each model's)."""
        if self.members:
            return {"mode": "set", "members": {m.model: m.load.describe() for m in self.members}}
        return self.load.describe()


def _pair_counts(flags: dict[str, Any]) -> tuple[int, int]:
    """--pairs and --max-pairs, checked."""
    min_pairs, max_pairs = flags["pairs"], flags["max_pairs"]
    if min_pairs < 2:
        raise BadInput(f"--pairs: expected at least 2 pairs (an interval needs two), got {min_pairs}")
    if max_pairs < min_pairs:
        raise BadInput(f"--max-pairs: expected at least --pairs ({min_pairs}), got {max_pairs}")
    return min_pairs, max_pairs


def _gate_rules(flags: dict[str, Any], min_pairs: int, max_pairs: int) -> dict[str, Any]:
    """The gate's rules from --max-regression, --budget, --inconclusive and --seed (with the checked pair counts)."""
    return {"max_regression": parse_fraction(flags["max_regression"]), "min_pairs": min_pairs,
            "max_pairs": max_pairs, "budget_s": parse_duration(flags["budget"], "--budget"),
            "inconclusive_passes": flags["inconclusive"] == "pass", "seed": flags["seed"]}


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


def set_source(flag: str, given: Path, repository: Path, members: Sequence[Member]) -> SetSource:
    """The configs a --baseline/--candidate of a set names: a folder holding <model>/config.pbtxt for every model of
    the set (a model repository, or a search's output folder). Each config's name must be its model's; a model folder
    with more than config.pbtxt must hold -r's model files (one server serves -r's)."""
    folder = Path(given)
    wanted = f"with --models, give a folder holding <model>/config.pbtxt for each of {', '.join(m.model for m in members)}"
    if not folder.is_dir():
        raise BadInput(f"{flag} {folder}: not a folder ({wanted}: a model repository or a search's output folder)")
    configs, texts = [], []
    for member in members:
        path = folder / member.model / "config.pbtxt"
        if not path.is_file():
            raise BadInput(f"{flag} {folder}: no {member.model}/config.pbtxt there ({wanted})")
        if _model_files(path.parent):
            _same_model_files(flag, path.parent, model_dir(repository, member.model),
                              "so a side's folder may differ from -r's only in its config.pbtxt files")
        config = read_model_config(path)
        if config.name != member.model:
            raise BadInput(f"{flag} {path}: a config for model {config.name!r}, not {member.model}")
        configs.append((member.model, config))
        texts.append((member.model, to_text(config)))
    return SetSource(SetBase(tuple(configs)), str(folder), tuple(texts))


def _model_files(root: Path) -> dict[str, bytes]:
    """A model folder's files but config.pbtxt (relative path -> sha256)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).digest() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "config.pbtxt" and "__pycache__" not in p.parts}


def _same_model_files(flag: str, theirs: Path, ours: Path, advice: str = "") -> None:
    """A second repository's model may differ from -r's only in config.pbtxt: one server serves -r's model files, so
    another model.py, weights or version folder would be measured as -r's (give a version folder of -r instead)."""
    mine, other = _model_files(ours), _model_files(theirs)
    if mine != other:
        differ = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
        advice = advice or (f"so put the candidate's files in a version folder of {ours} and give that folder")
        raise BadInput(f"{flag} {theirs.parent}: its {theirs.name} differs from -r's in {', '.join(differ[:3])}"
                       f"{' …' if len(differ) > 3 else ''}; compare serves -r's model files with each config, {advice}")


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
    launcher = job.launchers.launcher(pull_progress=progress)
    bench: Bench
    if isinstance(job.baseline, SetSource):  # idle power is measured with the baseline's configs loaded
        bench = SetCompareBench(launcher, job.model_repository, job.members, job.output, job.settings,
                                job.constraints, job.meters, progress)
    else:
        bench = Bench(launcher, job.model_repository, job.model, job.baseline.config, job.output, job.inputs,
                      job.load, job.settings, job.constraints, job.meters, progress)
    with bench:
        comparison = measure_pairs(job, bench, progress)
    write_json(paths.compare_json_path(job.output), comparison.to_document())
    atomic_write(paths.compare_md_path(job.output), render_markdown(comparison))
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


class SetCompareBench(SetBench):
    """A SetBench that measures whole configs (a side of a set's comparison may change more than the knobs)."""

    def measure_configs(self, configs: SetBase) -> Measurement:
        """Load every model's whole config of `configs` (one after another), then measure the set, each model at its
        own load over the same windows and meters; raises what a measurement raises (ModelLoadError, ServerDied,
        LoadGenerationError, LoadToolError)."""
        self._ensure_alive()
        self._preloaded = None
        drives = []
        for member in self.members:
            config = configs.of(member.model)
            samples = load_trial(replace(self._member_ctx(member), base=config), trial_of(config))
            drives.append(Drive(member.model, member.load, samples))
        trials = own_config(configs)
        assert isinstance(trials, SetConfig)
        return measure_set(self._ctx(), trials, drives)


def _measure(bench: Bench, side: ConfigSource | SetSource, job: CompareJob) -> Measurement:
    """One measurement of one side; a config Triton refuses is bad input naming its flag and file (a set's: folder,
    with Triton's words naming the model)."""
    flag = "--baseline" if side is job.baseline else "--candidate"
    try:
        if isinstance(side, SetSource):
            assert isinstance(bench, SetCompareBench)
            return bench.measure_configs(side.config)
        return bench.measure_config(side.config)
    except ModelLoadError as exc:
        raise BadInput(f"{flag} {side.path}: Triton refused it: {str(exc).splitlines()[0]}") from None
    except GreentuneError as exc:
        raise GreentuneError(f"measuring {flag} {side.path} failed: {str(exc).splitlines()[0]}") from None


def _comparison(job: CompareJob, pairs: list[Pair], stop_reason: str) -> Comparison:
    return Comparison(model=job.model, baseline_path=job.baseline.path, candidate_path=job.candidate.path,
                      baseline_text=job.baseline.text, candidate_text=job.candidate.text, pairs=tuple(pairs),
                      max_regression=job.max_regression, inconclusive_passes=job.inconclusive_passes,
                      constraints=job.constraints, load=job.load_description(), stop_reason=stop_reason,
                      members=_set_members(job))


def _set_members(job: CompareJob) -> tuple[SetMember, ...]:
    """A set's models for the comparison: each one's limits and both sides' config.pbtxt (empty for one model)."""
    if not isinstance(job.baseline, SetSource) or not isinstance(job.candidate, SetSource):
        return ()
    baseline, candidate = dict(job.baseline.texts), dict(job.candidate.texts)
    return tuple(SetMember(m.model, m.constraints, baseline[m.model], candidate[m.model]) for m in job.members)
