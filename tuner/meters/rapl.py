"""CPU package and DRAM energy from Linux powercap (RAPL) counters, with wrap-around handled."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import MeterUnavailable
from tuner.meters.base import SOURCE_RAPL, Reading

# energy_uj is root-only since CVE-2020-8694 (Platypus: unprivileged RAPL reads leak secrets through power
# side channels), so access goes to one trusted group, never to every user (chmod a+r).
RAPL_ACCESS_ADVICE = (
    "energy counters are root-only because of CVE-2020-8694 (power side channel); give one trusted group read "
    "access with a udev rule (README: 'RAPL access'): groupadd -f rapl; usermod -aG rapl $USER; "
    "/etc/udev/rules.d/60-rapl.rules: SUBSYSTEM==\"powercap\", ACTION==\"add\", "
    "RUN+=\"/bin/chgrp rapl /sys%p/energy_uj\", RUN+=\"/bin/chmod g+r /sys%p/energy_uj\"; "
    "then udevadm trigger -s powercap (or run greentune as root)"
)

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass(frozen=True)
class RaplDomain:
    """One powercap zone: its name (package-0, dram, ...), energy file and counter range (µJ)."""

    label: str
    energy_path: Path
    max_energy_uj: int


def find_domains(root: Path = POWERCAP_ROOT) -> list[RaplDomain]:
    """Package zones and their DRAM subzones (core/uncore are inside the package and would count twice)."""
    if not root.exists():
        raise MeterUnavailable(f"RAPL: {root} does not exist (no powercap on this machine)")
    zones = sorted(p for p in root.glob("*-rapl:*") if p.name.count(":") == 1)
    domains = []
    for zone in zones:
        candidates = [zone] + sorted(p for p in zone.glob(f"{zone.name}:*") if _name(p) == "dram")
        for path in candidates:
            name = _name(path)
            label = name if path is zone else f"{_name(zone)}-{name}"
            energy = path / "energy_uj"
            if not energy.exists():
                continue
            try:
                energy.read_text()
                max_range = int((path / "max_energy_range_uj").read_text())
            except PermissionError:
                raise MeterUnavailable(f"RAPL: {energy} exists but is not readable; {RAPL_ACCESS_ADVICE}") from None
            except (OSError, ValueError) as exc:
                raise MeterUnavailable(f"RAPL: cannot read {path}: {exc}") from None
            domains.append(RaplDomain(label.replace("package-", "package"), energy, max_range))
    if not domains:
        raise MeterUnavailable(f"RAPL: no readable *-rapl:* zones under {root}")
    return domains


def _name(path: Path) -> str:
    try:
        return (path / "name").read_text().strip()
    except OSError:
        return path.name


def delta_uj(start: int, end: int, max_range: int) -> int:
    """Counter difference allowing for one wrap-around at max_energy_range_uj."""
    return end - start if end >= start else end + (max_range - start) + 1


class RaplMeter:
    """Whole-package CPU (and DRAM) joules: includes every process on the CPU, not only the server."""

    name = "rapl"
    measures_energy = True
    min_window_s = 0.0
    preferred_window_s = 2.0

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.root = root
        self.domains = find_domains(root)
        self._start: dict[str, int] = {}
        self._start_t = 0.0

    def _read(self) -> dict[str, int]:
        try:
            return {d.label: int(d.energy_path.read_text()) for d in self.domains}
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"RAPL: reading {self.root} failed: {exc}") from None

    def begin(self) -> None:
        """Read every domain's counter."""
        self._start = self._read()
        self._start_t = time.monotonic()

    def end(self) -> Reading:
        """Joules per domain since begin()."""
        end = self._read()
        energy = {f"cpu-{d.label}": delta_uj(self._start[d.label], end[d.label], d.max_energy_uj) / 1e6
                  for d in self.domains}
        return Reading(meter=self.name, source=SOURCE_RAPL, duration_s=time.monotonic() - self._start_t,
                       energy_j=energy, details={"root": str(self.root), "scope": "whole CPU package"})

    def close(self) -> None:
        """Nothing to release."""
