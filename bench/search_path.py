"""The path one search takes through tuner/ before its first trial is measured, traced while it runs.

Runs `greentune search --trials 1` in this process on the real embedded Triton server (the bundled mlp example,
builtin load engine, short windows) with a profile hook, and follows which tuner/ file holds the innermost running
tuner function at every call and return, until the bench is first asked to measure. Prints how many tuner files the
search passes through, how many times control moves from one file to another and how often it comes back to
cli.py, and the files in the order they are first entered.

usage: python bench/search_path.py [--root DIR]
  --root DIR: trace the tuner/ package of another checkout (e.g. `git worktree add /tmp/before COMMIT`), with this
              checkout's environment.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent.parent
FLAGS = ["--trials", "1", "-c", "2", "--warmup", "0.5", "--window", "1", "--max-windows", "3", "--stability", "0.5",
         "--load-generator", "builtin", "--idle-seconds", "0.5"]


class FirstTrial(Exception):
    """Raised from the hook when the bench is first asked to measure: the trace ends there."""


class PathTrace:
    """The tuner/ file of the innermost tuner frame at each call and return, as visits (a change of file)."""

    def __init__(self, package: Path) -> None:
        self.package = str(package) + "/"
        self.visits: list[str] = []
        self.stack: list[str] = []
        self.importing = 0  # module bodies being run (a lazy import): not part of the path

    def _file(self, frame: FrameType) -> str | None:
        name = frame.f_code.co_filename
        return name[len(self.package) - len("tuner/"):] if name.startswith(self.package) else None

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        """sys.setprofile hook: track calls and returns of tuner functions."""
        if event not in ("call", "return"):
            return
        if frame.f_code.co_name == "<module>":
            self.importing += 1 if event == "call" else -1
            return
        if self.importing:
            return
        where = self._file(frame)
        if where is None:
            return
        if event == "call":
            if where == "tuner/bench.py" and frame.f_code.co_name == "measure":
                raise FirstTrial
            self.stack.append(where)
        elif self.stack:
            self.stack.pop()
        current = self.stack[-1] if self.stack else None
        if current is not None and (not self.visits or self.visits[-1] != current):
            self.visits.append(current)


def trace(root: Path) -> PathTrace:
    """Run the search under the hook; the trace up to the first measurement."""
    sys.path.insert(0, str(root))
    from tuner.cli import cli  # the checkout's own package

    package = Path(sys.modules["tuner"].__file__ or "").parent
    assert package.resolve() == (root / "tuner").resolve(), f"imported {package}, not {root / 'tuner'}"
    path = PathTrace(package)
    with tempfile.TemporaryDirectory() as out:
        args = ["search", "-r", str(HERE / "model_repository"), "-m", "mlp", "--space", "cpu", *FLAGS, "-o", out]
        sys.setprofile(path.hook)
        try:
            cli.main(args, standalone_mode=False)
        except FirstTrial:
            pass
        finally:
            sys.setprofile(None)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE)
    root = parser.parse_args().root.resolve()
    path = trace(root)
    counts = Counter(path.visits)
    first = list(dict.fromkeys(path.visits))
    print(f"{root}: before the first trial is measured, one search passes through {len(first)} tuner files, "
          f"moves between files {max(0, len(path.visits) - 1)} times and comes back to tuner/cli.py "
          f"{max(0, counts['tuner/cli.py'] - 1)} times")
    print("files in the order first entered (visits):")
    for name in first:
        print(f"  {name} ({counts[name]})")


if __name__ == "__main__":
    main()
