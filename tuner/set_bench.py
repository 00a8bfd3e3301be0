"""The bench of a set of models (`search --models`): one server with every model of the set loaded, each driven by
its own engine at its own load over the same windows and meters; and each model alone, for what sharing saves."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tuner.bench import Bench, LoadPolicy
from tuner.errors import ModelLoadError
from tuner.events import IdleMeasuring, Progress, emit
from tuner.load import LoadSpec
from tuner.measure import (
    Drive,
    InputSource,
    MeasureContext,
    MeasureSettings,
    load_trial,
    measure_idle,
    measure_set,
    measure_trial,
)
from tuner.meters.select import MeterChoice
from tuner.model_config import ModelConfig, SetBase, own_config
from tuner.objective import Constraints, set_violations
from tuner.results import Measurement, SetConfig, TrialConfig
from tuner.screening import Screen
from tuner.server import control
from tuner.server.base import ServerLauncher
from tuner.space import Space


@dataclass(frozen=True)
class Member:
    """One model of a set: its own config, its space (as the model can take it), limits, load and inputs."""

    model: str
    base: ModelConfig
    space: Space
    constraints: Constraints
    load: LoadSpec
    inputs: InputSource


def member_limits(members: Sequence[Member]) -> dict[str, Constraints]:
    """Each model's own limits, by model."""
    return {m.model: m.constraints for m in members}


class SetBench(Bench):
    """A Bench whose configs are SetConfigs: every model of the set is loaded with its config, then all are driven at
    once; the set's Measurement holds each model's figures. Idle power is measured with every own config loaded."""

    def __init__(self, launcher: ServerLauncher, model_repository: Path, members: Sequence[Member], output: Path,
                 settings: MeasureSettings, constraints: Constraints, meters: MeterChoice,
                 progress: Progress | None) -> None:
        first = members[0]
        super().__init__(launcher, model_repository, "+".join(m.model for m in members), first.base, output,
                         first.inputs, LoadPolicy(first.load), settings, constraints, meters, progress)
        self.members = tuple(members)

    def _member_ctx(self, member: Member) -> MeasureContext:
        return replace(self._ctx(), model=member.model, base=member.base, inputs=member.inputs)

    def _load_set(self, config: SetConfig) -> list[Drive]:
        """Load every model's config of the set (one after another) and return how each is driven."""
        return [Drive(m.model, m.load, load_trial(self._member_ctx(m), config.of(m.model))) for m in self.members]

    def _measure_idle(self, context: MeasureContext) -> dict[str, float]:
        """Idle power with every model's own config loaded and no load."""
        if self.settings.idle_s <= 0 or not any(m.measures_energy for m in self.meters):
            return {}
        self._context = context  # the members' contexts derive from it
        config = own_config(SetBase(tuple((m.model, m.base) for m in self.members)))
        assert isinstance(config, SetConfig)
        try:
            drives = self._load_set(config)
        except ModelLoadError as exc:
            raise ModelLoadError(f"the models' own configs do not load together, so there is no baseline: {exc}") from None
        emit(self.progress, IdleMeasuring(self.settings.idle_s))
        idle = measure_idle(context.server, self.meters, self.settings.idle_s)
        self._preloaded = (config.key(), drives)
        return idle

    def _measure(self, config: TrialConfig | SetConfig, concurrency: int | None,
                 screen: Screen | None = None) -> Measurement:
        assert isinstance(config, SetConfig)
        preloaded, self._preloaded = self._preloaded, None
        drives = preloaded[1] if preloaded is not None and preloaded[0] == config.key() else self._load_set(config)
        return measure_set(self._ctx(), config, drives, screen)

    def violations(self, measurement: Measurement | None) -> dict[str, float]:
        """The server's limits on the set, each model's on its own figures."""
        return set_violations(measurement, self.constraints, member_limits(self.members))

    def export_member(self, model: str, config: TrialConfig, path: Path) -> Path:
        """Load one model's config of the set, answer one smoke inference, write it to path (as Bench.export)."""
        member = next(m for m in self.members if m.model == model)
        self._ensure_alive()
        self._preloaded = None
        return self._export_on(self._member_ctx(member), config, path)

    def measure_alone(self, config: SetConfig) -> dict[str, Measurement | str]:
        """Each model alone on the server (the others unloaded), with its config of `config`, at its own load: what
        it would cost on a server of its own. A model that fails alone maps to the reason."""
        self._ensure_alive()
        self._preloaded = None
        out: dict[str, Measurement | str] = {}
        for member in self.members:
            for other in self.members:
                if other is not member:
                    control.unload(self.server, other.model)
            try:
                out[member.model] = measure_trial(self._member_ctx(member), config.of(member.model), member.load)
            except Exception as exc:  # noqa: BLE001 - one line in the summary; the search's result stands
                out[member.model] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if not self.server.is_alive():
                    break
        return out
