"""The shape of tuner/: modules, import cycles, upward imports against the layers, function-local imports, the longest
functions and the largest classes. Reads the source with the standard library's ast only; imports nothing from tuner.

usage: python bench/structure.py [--root DIR]   (DIR: a checkout that holds tuner/; default: this one)
An import counts wherever it is written: at the top, under `if TYPE_CHECKING:` or inside a function. It is an edge to
the module it names: `from tuner.server import control` to tuner.server.control, `from tuner.server import
LocalLauncher` to the package tuner.server (its __init__).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "tuner"
ROOT = Path(__file__).resolve().parents[1]

# Top to bottom: a module may import modules of its own layer or of a lower one, never of a higher one.
# Names are relative to tuner/; "report/*" is the package report and every module in it; "__init__" is tuner itself.
# Names that match no module (yet) are skipped.
LAYERS: list[list[str]] = [
    ["cli", "terminal", "__main__"],
    ["search_run", "run", "doctor", "export", "compare"],  # one command each
    ["parallel", "outputs", "report/*"],
    ["search"],
    ["policy"],
    ["step"],
    ["study", "sampling", "job", "modelset"],  # modelset: a set of models' job, built on job
    ["bench", "set_bench"],
    ["measure", "pruning", "screening", "stopping", "provenance"],  # provenance reads the hardware through meters
    ["engines/*", "meters/*"],
    ["server/*"],  # meters are picked for a server (meters/select.py) and probe it; a server knows no meter
    ["load", "inputs"],  # what the engines drive and send; the server's smoke inference sends a sample too
    ["objective", "space", "model_config", "results", "impact", "events", "errors", "paths", "fileio", "redact",
     "storage", "comparison", "compare_words", "__init__"],
]


@dataclass(frozen=True)
class Import:
    """One import of a tuner module: who imports what, where, and whether inside a function."""

    source: str  # the importing module, e.g. tuner.bench
    target: str  # the imported module, e.g. tuner.export
    path: Path  # the importing file, relative to the root
    line: int
    local: bool

    def where(self) -> str:
        """file:line of the import."""
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Span:
    """A function or class: where it starts and how many lines it spans."""

    path: Path
    line: int
    name: str
    lines: int

    def where(self) -> str:
        """file:line of its def or class line."""
        return f"{self.path}:{self.line}"


def module_name(relative: Path) -> str:
    """tuner/report/html.py -> tuner.report.html; tuner/report/__init__.py -> tuner.report."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package under root, by dotted name, with its path relative to root."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        relative = path.relative_to(root)
        if "__pycache__" not in relative.parts:
            found[module_name(relative)] = relative
    return found


def _walk(node: ast.AST, local: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below `node`, with whether it lies inside a function body."""
    for child in ast.iter_child_nodes(node):
        yield child, local
        inside = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inside)


def _targets(node: ast.Import | ast.ImportFrom, source: str, is_package: bool, known: set[str]) -> list[str]:
    """The tuner modules an import statement names (empty for other packages)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE]
    base = node.module or ""
    if node.level:  # relative: from .x import y, from .. import z
        package = source.split(".") if is_package else source.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != PACKAGE:
        return []
    names = [f"{base}.{alias.name}" for alias in node.names]
    submodules = [name for name in names if name in known]
    return submodules + ([base] if len(submodules) < len(names) else [])


def imports(root: Path) -> list[Import]:
    """Every import of a tuner module in tuner/, top-level and function-local."""
    found = modules(root)
    known = set(found)
    result = []
    for source, relative in found.items():
        tree = ast.parse((root / relative).read_text(), str(relative))
        is_package = relative.name == "__init__.py"
        for node, local in _walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(node, source, is_package, known):
                    if target != source:
                        result.append(Import(source, target, relative, node.lineno, local))
    return result


def cycles(edges: list[Import]) -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_edges(edges: list[Import], component: list[str]) -> list[Import]:
    """The imports that hold a cycle together (both ends inside the component)."""
    members = set(component)
    return [e for e in edges if e.source in members and e.target in members]


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The index of the module's layer (0 is the top), or None when no layer names it."""
    relative = module.removeprefix(PACKAGE).removeprefix(".") or "__init__"
    for number, layer in enumerate(layers):
        for pattern in layer:
            if pattern.endswith("/*"):
                package = pattern[:-2].replace("/", ".")
                if relative == package or relative.startswith(package + "."):
                    return number
            elif relative == pattern.replace("/", "."):
                return number
    return None


def upward_imports(edges: list[Import], layers: list[list[str]]) -> list[Import]:
    """Imports of a module in a higher layer than the importer's."""
    upward = []
    for edge in edges:
        source, target = layer_of(edge.source, layers), layer_of(edge.target, layers)
        if source is not None and target is not None and target < source:
            upward.append(edge)
    return upward


def _number(module: str, layers: list[list[str]]) -> int:
    """The module's layer as LAYERS' comments count them (L1 is the top)."""
    return (layer_of(module, layers) or 0) + 1


def unlayered(names: list[str], layers: list[list[str]]) -> list[str]:
    """Modules that no layer names (so no import of theirs is checked)."""
    return [name for name in names if layer_of(name, layers) is None]


def local_imports(edges: list[Import]) -> dict[Path, list[Import]]:
    """Function-local imports of tuner modules, by file."""
    by_file: dict[Path, list[Import]] = defaultdict(list)
    for edge in edges:
        if edge.local:
            by_file[edge.path].append(edge)
    return dict(by_file)


def spans(root: Path, files: list[Path] | None = None) -> tuple[list[Span], list[Span]]:
    """(functions and methods, classes) of tuner/ (or of `files`, relative to root), each with its length in lines."""
    functions: list[Span] = []
    classes: list[Span] = []

    def visit(node: ast.AST, relative: Path, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                span = Span(relative, child.lineno, name, (child.end_lineno or child.lineno) - child.lineno + 1)
                (classes if isinstance(child, ast.ClassDef) else functions).append(span)
                visit(child, relative, name + ".")
            else:
                visit(child, relative, prefix)

    for relative in files if files is not None else list(modules(root).values()):
        visit(ast.parse((root / relative).read_text(), str(relative)), relative, "")
    return functions, classes


def longest(found: list[Span], count: int) -> list[Span]:
    """The `count` longest spans, longest first."""
    return sorted(found, key=lambda s: (-s.lines, str(s.path), s.line))[:count]


def report(root: Path, layers: list[list[str]]) -> str:
    """The whole report as text."""
    names = sorted(modules(root))
    edges = imports(root)
    found_cycles = cycles(edges)
    upward = upward_imports(edges, layers)
    local = local_imports(edges)
    functions, classes = spans(root)
    out = [f"{root / PACKAGE}: {len(names)} modules, {len(edges)} imports of tuner modules "
           f"({sum(map(len, local.values()))} function-local)", ""]
    out.append(f"cycles (strongly connected components of more than one module): {len(found_cycles)}")
    for component in found_cycles:
        out.append(f"  {len(component)} modules: {', '.join(component)}")
        out += [f"    {e.where()} {e.source} -> {e.target}{' (in a function)' if e.local else ''}"
                for e in cycle_edges(edges, component)]
    out += ["", f"upward imports (against LAYERS in bench/structure.py): {len(upward)}"]
    out += [f"  {e.where()} {e.source} (L{_number(e.source, layers)}) -> {e.target} (L{_number(e.target, layers)})"
            for e in upward]
    missing = unlayered(names, layers)
    out += ["", f"modules in no layer: {len(missing)}" + (f": {', '.join(missing)}" if missing else "")]
    out += ["", f"function-local imports of tuner modules: {sum(map(len, local.values()))} in {len(local)} file{'s' * (len(local) != 1)}"]
    for path, found in sorted(local.items(), key=lambda item: (-len(item[1]), str(item[0]))):
        out.append(f"  {path}: {len(found)} (lines {', '.join(str(e.line) for e in found)})")
    out += ["", "longest functions and methods:"]
    out += [f"  {s.where()} {s.name} {s.lines} lines" for s in longest(functions, 10)]
    out += ["", "largest classes:"]
    out += [f"  {s.where()} {s.name} {s.lines} lines" for s in longest(classes, 5)]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="a checkout that holds tuner/ (default: this one)")
    args = parser.parse_args()
    if not (args.root / PACKAGE).is_dir():
        print(f"{args.root}: no {PACKAGE}/ here", file=sys.stderr)
        return 2
    print(report(args.root.resolve(), LAYERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
