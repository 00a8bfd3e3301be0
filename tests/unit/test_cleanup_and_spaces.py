"""doctor --cleanup removes only containers provably ours and dead; built-in spaces resolve from a wheel or a clone."""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

import tuner.space
from tests.conftest import MODEL_REPOSITORY, ROOT
from tuner.errors import BadInput
from tuner.server.docker import LABEL_OUTPUT, LABEL_OWNER_PREFIX, LABEL_RUN, owner_labels, remove_leftovers
from tuner.server.identity import Owner, pid_exists
from tuner.space import builtin_space, builtin_space_names, space_from_name

OTHER_PID = 4_000_123  # a pid the tests pretend about; os.kill and /proc reads for it are faked
ME, OTHER_USER = 1000, 2000


def recorded_owner(uid: int = ME, start_ticks: int = 12345) -> Owner:
    """An owner recorded in this boot and pid namespace (so its pid may be checked), with OTHER_PID."""
    return replace(Owner.current(), pid=OTHER_PID, start_ticks=start_ticks, uid=uid)


def fake_proc(monkeypatch, kill_error: type[OSError] | None, stat: str | type[OSError]) -> None:
    """os.kill(OTHER_PID, 0) raises kill_error (None: succeeds); /proc/OTHER_PID/stat reads as stat or raises it."""
    real_kill, real_read = os.kill, Path.read_text

    def kill(pid: int, sig: int) -> None:
        if pid != OTHER_PID:
            return real_kill(pid, sig)
        if kill_error is not None:
            raise kill_error()

    def read_text(self: Path, *args, **kwargs) -> str:
        if str(self) != f"/proc/{OTHER_PID}/stat":
            return real_read(self, *args, **kwargs)
        if isinstance(stat, str):
            return stat
        raise stat(13 if stat is PermissionError else 2, os.strerror(13 if stat is PermissionError else 2))

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(Path, "read_text", read_text)


def stat_line(start_ticks: int) -> str:
    """A /proc/PID/stat line whose field 22 (start time) is start_ticks."""
    return f"{OTHER_PID} (trit on) S " + " ".join(["0"] * 18) + f" {start_ticks} 0 0\n"


# --- identity: EPERM means alive, an unreadable stat proves nothing ------------------------------------------------

@pytest.mark.parametrize("hidden", [FileNotFoundError, PermissionError], ids=["hidepid=2", "hidepid=1"])
def test_another_users_live_process_hidden_by_hidepid_is_not_proven_dead(monkeypatch, hidden):
    # hidepid=2 hides /proc/PID of other users (ENOENT), hidepid=1 refuses its files (EACCES); kill(pid, 0) says EPERM.
    fake_proc(monkeypatch, PermissionError, hidden)
    owner = recorded_owner(uid=OTHER_USER)
    assert not owner.proven_dead()  # not proven dead...
    assert not owner.is_running()  # ...though not seen running either
    assert pid_exists(OTHER_PID)


def test_an_existing_pid_with_unreadable_stat_is_kept_even_when_kill_succeeds(monkeypatch):
    fake_proc(monkeypatch, None, PermissionError)
    assert not recorded_owner().proven_dead()


def test_a_free_pid_or_a_readable_other_start_time_is_proven_dead(monkeypatch):
    fake_proc(monkeypatch, ProcessLookupError, FileNotFoundError)
    assert recorded_owner().proven_dead() and not pid_exists(OTHER_PID)
    fake_proc(monkeypatch, None, stat_line(99999))  # the pid now belongs to a process started at another time
    assert recorded_owner().proven_dead()
    fake_proc(monkeypatch, None, stat_line(12345))  # the same process, still running
    assert recorded_owner().is_running() and not recorded_owner().proven_dead()


def test_pid_exists_reads_the_kernels_answer(monkeypatch):
    calls: list[int] = []

    def kill(pid: int, sig: int) -> None:
        calls.append(pid)
        raise {1: PermissionError, 2: ProcessLookupError}.get(pid, OSError)()

    monkeypatch.setattr(os, "kill", kill)
    assert pid_exists(1) and not pid_exists(2)
    assert pid_exists(0) and pid_exists(-5) and calls == [1, 2]  # process groups are never asked about
    monkeypatch.undo()
    assert pid_exists(os.getpid())


# --- docker.remove_leftovers: only the caller's uid (any uid for root), only proven dead ---------------------------

@dataclass
class FakeContainer:
    name: str
    labels: dict[str, str]
    removed: bool = False

    def remove(self, force: bool = False) -> None:
        self.removed = True


@dataclass
class FakeContainers:
    items: list[FakeContainer] = field(default_factory=list)

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[FakeContainer]:
        assert filters == {"label": LABEL_RUN}
        return [c for c in self.items if LABEL_RUN in c.labels]


@dataclass
class FakeClient:
    containers: FakeContainers


def container(name: str, owner: Owner, without: str = "") -> FakeContainer:
    labels = {LABEL_RUN: name, LABEL_OUTPUT: "/tmp/gone", **owner_labels(owner)}
    labels.pop(LABEL_OWNER_PREFIX + without, None)
    return FakeContainer(name, labels)


def removed_by(uid: int, monkeypatch, containers: list[FakeContainer]) -> list[str]:
    monkeypatch.setattr(os, "getuid", lambda: uid)
    for c in containers:
        c.removed = False
    names = remove_leftovers(FakeClient(FakeContainers(containers)))
    assert names == [c.name for c in containers if c.removed]
    return names


def test_cleanup_leaves_other_users_live_containers_alone_under_hidepid(monkeypatch):
    fake_proc(monkeypatch, PermissionError, FileNotFoundError)  # their greentune is alive, its /proc hidden
    theirs = container("theirs", recorded_owner(uid=OTHER_USER))
    assert removed_by(ME, monkeypatch, [theirs]) == []
    assert removed_by(0, monkeypatch, [theirs]) == []  # even root: EPERM (or a hidden stat) is not death


def test_cleanup_touches_only_the_callers_own_containers_unless_root(monkeypatch):
    fake_proc(monkeypatch, ProcessLookupError, FileNotFoundError)  # every recorded owner is gone
    mine = container("mine", recorded_owner(uid=ME))
    theirs = container("theirs", recorded_owner(uid=OTHER_USER))
    unlabelled = container("no-uid", recorded_owner(uid=ME), without="uid")  # not provably anyone's
    everything = [mine, theirs, unlabelled]
    assert removed_by(ME, monkeypatch, everything) == ["mine"]
    assert removed_by(OTHER_USER, monkeypatch, everything) == ["theirs"]
    assert removed_by(0, monkeypatch, everything) == ["mine", "theirs"]


def test_containers_record_their_owners_uid():
    labels = owner_labels(Owner.current())
    assert labels[LABEL_OWNER_PREFIX + "uid"] == str(os.getuid())


# --- built-in spaces: the package tuner.spaces, else the source tree's search_spaces/ -------------------------------

def no_spaces_package(monkeypatch) -> None:
    """As when the source tree's tuner/ is imported over a non-editable install: no module tuner.spaces."""
    real_files = importlib.resources.files

    def files(anchor):
        if anchor == "tuner.spaces":
            raise ModuleNotFoundError("No module named 'tuner.spaces'", name="tuner.spaces")
        return real_files(anchor)

    monkeypatch.setattr(importlib.resources, "files", files)


def test_builtin_spaces_come_from_the_package_when_it_is_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(tuner.space, "SOURCE_SPACES", tmp_path / "none", raising=False)
    assert builtin_space_names() == ["cpu", "default", "gpu"]


def test_without_the_package_every_builtin_space_loads_from_the_source_tree(monkeypatch):
    names = sorted(p.stem for p in (ROOT / "search_spaces").glob("*.yaml"))
    from_package = {name: builtin_space(name) for name in names}
    no_spaces_package(monkeypatch)
    assert builtin_space_names() == names
    for name in names:
        assert builtin_space(name) == from_package[name]
        assert space_from_name(name) == from_package[name]
    assert builtin_space("nope") is None


def test_without_either_the_error_is_one_bad_input_line(monkeypatch, tmp_path):
    no_spaces_package(monkeypatch)
    missing = tmp_path / "search_spaces"
    monkeypatch.setattr(tuner.space, "SOURCE_SPACES", missing, raising=False)
    with pytest.raises(BadInput) as error:
        space_from_name("cpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith("--space") and str(missing) in message


def test_python_m_tuner_in_the_clone_over_a_non_editable_install(tmp_path):
    # The layout for real: the clone's tuner/ first on sys.path, the dependencies importable, no .pth files
    # (-S), so neither the editable finder nor a wheel supplies tuner.spaces. The run gets past the space (cpu) to the
    # next flag's check: exit 2 on --concurrency, not a ModuleNotFoundError.
    paths = sysconfig.get_paths()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))}
    probe = subprocess.run([sys.executable, "-S", "-c", "import importlib.util as u; print(u.find_spec('tuner.spaces'))"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None", probe.stderr
    result = subprocess.run(
        [sys.executable, "-S", "-m", "tuner", "search", "-r", str(MODEL_REPOSITORY), "-m", "mlp", "--space", "cpu",
         "--concurrency", "0", "-o", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "--concurrency" in result.stderr
