"""The package's own import graph: no module imports, directly or through others, a module
that imports it back, and the engine never reaches for the command line.

An import inside a function still counts: it only postpones the circle to the first call.
Imports under ``if TYPE_CHECKING:`` do not run and are left out of the cycle check.

The helpers take the package folder as an argument (``EMBEDRAG_IMPORT_GRAPH_ROOT`` overrides
the default), so the test can be pointed at a scratch copy to see it fail.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(os.environ.get("EMBEDRAG_IMPORT_GRAPH_ROOT")
                    or Path(__file__).resolve().parents[1] / "embedrag")
FORBIDDEN_IN_ENGINE = ("embedrag.cli", "typer", "rich")


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the file holding the import
    target: str  # dotted name imported (a module of the package, or any other module)
    path: Path
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package in ``root`` (a folder whose name is the package's)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_checking: bool = False):
    """Yield ``(import node, under TYPE_CHECKING)`` for every import anywhere in ``node``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_stmt(stmt, True)
            for stmt in child.orelse:
                yield from _walk_stmt(stmt, type_checking)
            continue
        yield from _walk_stmt(child, type_checking)


def _walk_stmt(node: ast.AST, type_checking: bool):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node, type_checking
    yield from _walk(node, type_checking)


def collect_imports(root: Path) -> list[Import]:
    """Every import in every module under ``root``; ``from pkg import name`` resolves to the
    submodule ``pkg.name`` when there is one, relative imports to absolute names."""
    modules = module_names(root)
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_checking in _walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base_parts = package.split(".")
                    if node.level > 1:
                        base_parts = base_parts[: -(node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in dict.fromkeys(targets):
                found.append(Import(name, target, path, node.lineno, type_checking))
    return found


def import_graph(root: Path) -> dict[str, dict[str, Import]]:
    """module -> {imported module of the same package -> first import of it}, leaving out
    imports under TYPE_CHECKING and a module's imports of itself."""
    modules = module_names(root)
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for imp in collect_imports(root):
        if imp.type_checking or imp.target == imp.importer:
            continue
        target = imp.target
        while target and target not in modules:  # `import pkg.mod.attr`-style leftovers
            target = target.rpartition(".")[0]
        if target and target != imp.importer:
            graph[imp.importer].setdefault(target, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The groups of more than one module that all reach each other (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            connect(node)
    return sorted(components)


def _shortest_path(graph: dict[str, dict[str, Import]], start: str, goal: str,
                   members: set[str]) -> list[str]:
    parents = {start: start}
    frontier = [start]
    while goal not in parents:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt in members and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    path = [goal]
    while path[-1] != start:
        path.append(parents[path[-1]])
    return path[::-1]


def find_cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Circles covering every import edge that lies on one: for each edge inside a strongly
    connected group, the edge and the shortest way back. Each circle is the list of modules
    around it, starting at its smallest name and repeating it at the end."""
    cycles: list[list[str]] = []
    for component in strongly_connected(graph):
        members = set(component)
        for here in component:
            for there in sorted(graph[here]):
                if there not in members:
                    continue
                ring = [here, *_shortest_path(graph, there, here, members)[:-1]]
                turn = ring.index(min(ring))
                cycle = ring[turn:] + ring[:turn] + [ring[turn]]
                if cycle not in cycles:
                    cycles.append(cycle)
    return cycles


def describe_cycle(graph: dict[str, dict[str, Import]], cycle: list[str], root: Path) -> str:
    steps = []
    for here, there in zip(cycle, cycle[1:]):
        imp = graph[here][there]
        steps.append(f"  {here} -> {there}  ({imp.path.relative_to(root.parent)}:{imp.line})")
    return " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_ROOT)
    assert len(graph) > 10, f"no package found at {PACKAGE_ROOT}"
    cycles = find_cycles(graph)
    report = "\n".join(describe_cycle(graph, cycle, PACKAGE_ROOT) for cycle in cycles)
    print(report)
    assert not cycles, f"{len(cycles)} import cycle(s) in {PACKAGE_ROOT}:\n{report}"


def test_the_engine_never_imports_the_command_line():
    engine = PACKAGE_ROOT.name + ".engine"
    offending = [
        f"{imp.path.relative_to(PACKAGE_ROOT.parent)}:{imp.line} imports {imp.target}"
        for imp in collect_imports(PACKAGE_ROOT)
        if (imp.importer == engine or imp.importer.startswith(engine + "."))
        and any(imp.target == bad or imp.target.startswith(bad + ".") for bad in FORBIDDEN_IN_ENGINE)
    ]
    assert not offending, "\n".join(offending)


def test_the_helpers_see_circles_and_resolve_imports(tmp_path):
    """The checker itself: a circle through a function-level relative import is found, one
    under TYPE_CHECKING is not, and ``from pkg import sub`` points at the submodule."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "sub" / "d.py").write_text("import typer\nfrom . import b as _b\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"].keys() == {"pkg.sub.b"}
    assert graph["pkg.sub.b"].keys() == {"pkg.a"}
    assert graph["pkg.c"] == {}
    assert graph["pkg.sub.d"].keys() == {"pkg.sub.b"}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.sub.b", "pkg.a"]]
    assert "pkg/sub/b.py:2" in describe_cycle(graph, cycles[0], pkg)
    assert any(imp.target == "typer" for imp in collect_imports(pkg))
