"""tuner/ keeps its shape: no import cycle, no upward import, no function-local import in cli.py, a small search loop
(read by bench/structure.py, which is also tested here on a small tree made to break each rule)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_structure():
    spec = importlib.util.spec_from_file_location("greentune_bench_structure", ROOT / "bench" / "structure.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


structure = _load_structure()
MAX_FUNCTION_LINES = 40
MAX_CLASS_LINES = 150


def test_no_import_cycle_in_tuner():
    edges = structure.imports(ROOT)
    found = structure.cycles(edges)
    assert not found, "import cycles in tuner/:\n" + "\n".join(
        f"{', '.join(component)}: " + "; ".join(f"{e.where()} imports {e.target}"
                                                 for e in structure.cycle_edges(edges, component))
        for component in found)


def test_no_upward_import_in_tuner():
    upward = structure.upward_imports(structure.imports(ROOT), structure.LAYERS)
    assert not upward, "imports of a higher layer (LAYERS in bench/structure.py):\n" + "\n".join(
        f"{e.where()} {e.source} imports {e.target}" for e in upward)


def test_every_module_has_a_layer():
    missing = structure.unlayered(sorted(structure.modules(ROOT)), structure.LAYERS)
    assert not missing, f"modules in no layer of LAYERS in bench/structure.py (their imports go unchecked): {missing}"


def test_cli_imports_tuner_at_the_top():
    local = structure.local_imports(structure.imports(ROOT)).get(Path("tuner/cli.py"), [])
    assert not local, "function-local imports of tuner modules in cli.py:\n" + "\n".join(
        f"{e.where()} {e.target}" for e in local)


@pytest.mark.parametrize("name", ["search.py", "step.py", "policy.py"])
def test_the_search_loop_is_small(name):
    relative = Path("tuner") / name
    if not (ROOT / relative).exists():
        pytest.skip(f"{relative} does not exist")
    functions, classes = structure.spans(ROOT, [relative])
    too_long = [f"{s.where()} {s.name}: {s.lines} lines" for s in functions if s.lines > MAX_FUNCTION_LINES]
    too_long += [f"{s.where()} class {s.name}: {s.lines} lines" for s in classes if s.lines > MAX_CLASS_LINES]
    assert not too_long, (f"over {MAX_FUNCTION_LINES} lines a function or {MAX_CLASS_LINES} a class:\n"
                          + "\n".join(too_long))


# The analysis itself, on a tree made to break each rule.

def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "tuner" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_cycle_through_a_function_local_import_is_found(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "a.py": "from tuner.b import helper\n",
        "b.py": "def helper():\n    from tuner import a\n    return a\n",
        "c.py": "from tuner.a import helper\n",
        "sub/__init__.py": "",
        "sub/d.py": "from . import e\n",
        "sub/e.py": "from ..sub import d\n",
    })
    edges = structure.imports(root)
    assert structure.cycles(edges) == [["tuner.a", "tuner.b"], ["tuner.sub.d", "tuner.sub.e"]]
    held = structure.cycle_edges(edges, ["tuner.a", "tuner.b"])
    assert sorted((e.where(), e.local) for e in held) == [("tuner/a.py:1", False), ("tuner/b.py:2", True)]
    assert {str(p): [e.line for e in found] for p, found in structure.local_imports(edges).items()} == {
        "tuner/b.py": [2]}


def test_an_upward_import_is_found(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "",
        "top.py": "import tuner.low\n",
        "pkg/__init__.py": "",
        "pkg/mid.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tuner.top import X\n",
        "low.py": "def f():\n    from tuner.pkg import mid\n",
        "stray.py": "",
    })
    layers = [["top"], ["pkg/*"], ["low", "__init__", "missing"]]
    upward = structure.upward_imports(structure.imports(root), layers)
    assert [(e.where(), e.target) for e in upward] == [("tuner/low.py:2", "tuner.pkg.mid"),
                                                       ("tuner/pkg/mid.py:3", "tuner.top")]
    assert structure.unlayered(sorted(structure.modules(root)), layers) == ["tuner.stray"]


def test_long_functions_and_large_classes_are_measured(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(45))
    root = _tree(tmp_path, {
        "__init__.py": "",
        "step.py": f"class Big:\n    def long(self):\n{body.replace('    ', '        ')}\n\ndef short():\n    pass\n",
    })
    functions, classes = structure.spans(root, [Path("tuner/step.py")])
    assert [(s.where(), s.name, s.lines) for s in structure.longest(functions, 10)] == [
        ("tuner/step.py:2", "Big.long", 46), ("tuner/step.py:50", "short", 2)]
    assert [(s.name, s.lines) for s in classes] == [("Big", 47)]
