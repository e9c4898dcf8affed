"""ARCHITECTURE.md, checked: every module has a layer, imports only go down the layers,
and the only long functions and classes are the ones the page names.

The layer table is here (``LAYERS``) and in ARCHITECTURE.md; a test keeps the two equal.
The list of long functions and classes is read from ARCHITECTURE.md itself. Pure ``ast``:
nothing of the package is imported. ``EMBEDRAG_IMPORT_GRAPH_ROOT`` (see
``test_import_graph``) points the tests at a scratch copy, with its ARCHITECTURE.md next to
the package folder.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from test_import_graph import PACKAGE_ROOT, collect_imports, module_names

ARCHITECTURE = PACKAGE_ROOT.parent / "ARCHITECTURE.md"
LAYERS_HEADING = "Layers"
LONG_HEADING = "Long functions and classes"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250

# Bottom to top, as the "Layers" table of ARCHITECTURE.md. A module may import its own layer
# and the layers below it. Names are modules of <package>.engine unless they start with the
# package's name; "X.*" is every submodule of X.
LAYERS: list[tuple[str, list[str]]] = [
    ("core", ["embedrag._version", "embedrag.engine", "core", "core.*"]),
    ("data", ["data", "data.*"]),
    ("encoding", ["encoding", "encoding.*"]),
    ("retrieval", ["retrieval", "retrieval.*"]),
    ("evaluation", ["evaluation", "evaluation.*"]),
    ("mining", ["mining", "mining.*"]),
    ("training", ["training", "training.*"]),
    ("llm", ["llm", "llm.*"]),
    ("serving", ["serve", "serve.*"]),
    ("tools", ["tools", "tools.*"]),
    ("api", ["embedrag"]),
    ("cli", ["embedrag.__main__", "embedrag.cli", "embedrag.cli.*"]),
]


def _full_name(name: str, package: str) -> str:
    if name == package or name.startswith(package + "."):
        return name
    return f"{package}.engine.{name}"


def layer_ranks(root: Path, layers=LAYERS) -> tuple[dict[str, int], list[str]]:
    """module -> rank (index in ``layers``) for the package in ``root``, and the problems:
    names that match no module, modules given two layers."""
    modules = module_names(root)
    ranks: dict[str, int] = {}
    problems = []
    for rank, (layer, names) in enumerate(layers):
        for name in names:
            full = _full_name(name, root.name)
            if full.endswith(".*"):
                matched = [m for m in modules if m.startswith(full[:-1])]
            else:
                matched = [full] if full in modules else []
            if not matched:
                problems.append(f"{name!r} (layer {layer}) names no module of {root}: remove it "
                                "from LAYERS in tests/test_architecture.py and from ARCHITECTURE.md")
            for module in matched:
                if module in ranks and ranks[module] != rank:
                    problems.append(f"{module} is in two layers: {layers[ranks[module]][0]} and {layer}")
                ranks[module] = rank
    return ranks, problems


def upward_imports(root: Path, ranks: dict[str, int], layers=LAYERS) -> list[str]:
    """``file:line: importer (layer) imports target (higher layer)`` for every import (in
    functions too, not under TYPE_CHECKING) from a lower layer into a higher one."""
    modules = module_names(root)
    found = []
    for imp in collect_imports(root):
        if imp.type_checking:
            continue
        target = imp.target
        while target and target not in modules:  # `from pkg.mod import attr`
            target = target.rpartition(".")[0]
        if not target or target == imp.importer or imp.importer not in ranks or target not in ranks:
            continue
        low, high = ranks[imp.importer], ranks[target]
        if low < high:
            found.append(f"{imp.path.relative_to(root.parent)}:{imp.line}: {imp.importer} "
                         f"({layers[low][0]}) imports {target} ({layers[high][0]})")
    return found


def long_definitions(root: Path, max_function: int = MAX_FUNCTION_LINES,
                     max_class: int = MAX_CLASS_LINES) -> dict[str, str]:
    """``module.qualname`` -> ``file:line, N lines`` for every function (nested and methods
    included) longer than ``max_function`` lines and every class longer than ``max_class``."""
    found = {}

    def visit(node: ast.AST, prefix: str, path: Path) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                lines = child.end_lineno - child.lineno + 1
                limit = max_class if isinstance(child, ast.ClassDef) else max_function
                if lines > limit:
                    found[name] = f"{path.relative_to(root.parent)}:{child.lineno}, {lines} lines"
                visit(child, name, path)
            else:
                visit(child, prefix, path)

    for module, path in module_names(root).items():
        visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), module, path)
    return found


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section of a markdown text ("" if there is none)."""
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1) if match else ""


def doc_layers(text: str) -> list[tuple[str, list[str]]]:
    """The rows ``| rank | layer | `modules` | ...`` of the Layers table, by rank."""
    rows = []
    for line in section(text, LAYERS_HEADING).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return [(layer, names) for _, layer, names in sorted(rows)]


def doc_long_names(text: str) -> list[str]:
    """The first backticked name of each list item of the long-functions section."""
    return re.findall(r"^\s*[-*]\s+`([^`]+)`", section(text, LONG_HEADING), re.M)


def test_every_module_has_a_layer():
    ranks, problems = layer_ranks(PACKAGE_ROOT)
    assert len(ranks) > 10, f"no package found at {PACKAGE_ROOT}"
    missing = [f"{module} ({path.relative_to(PACKAGE_ROOT.parent)}) has no layer: add it to the "
               "Layers table of ARCHITECTURE.md and to LAYERS in tests/test_architecture.py"
               for module, path in module_names(PACKAGE_ROOT).items() if module not in ranks]
    assert not missing + problems, "\n".join(missing + problems)


def test_imports_never_go_up_a_layer():
    ranks, _ = layer_ranks(PACKAGE_ROOT)
    offending = upward_imports(PACKAGE_ROOT, ranks)
    assert not offending, (
        f"{len(offending)} import(s) from a lower layer into a higher one (see ARCHITECTURE.md):\n"
        + "\n".join(offending))


def test_the_layer_table_of_architecture_md_is_the_tests():
    documented = doc_layers(ARCHITECTURE.read_text(encoding="utf-8"))
    assert documented == LAYERS, (
        "ARCHITECTURE.md's Layers table and LAYERS in tests/test_architecture.py differ:\n"
        f"  ARCHITECTURE.md: {documented}\n  LAYERS:          {LAYERS}")


def test_only_the_named_functions_and_classes_are_long():
    named = doc_long_names(ARCHITECTURE.read_text(encoding="utf-8"))
    assert named, f"no list under '## {LONG_HEADING}' in {ARCHITECTURE}"
    found = long_definitions(PACKAGE_ROOT)
    unnamed = [f"{name} ({where}): over the limit of {MAX_FUNCTION_LINES} lines a function, "
               f"{MAX_CLASS_LINES} a class; split it, or name it with a reason in "
               f"ARCHITECTURE.md's '{LONG_HEADING}'" for name, where in found.items()
               if name not in named]
    stale = [f"{name}: named in ARCHITECTURE.md's '{LONG_HEADING}' but not (or no longer) "
             "long: remove it from the list" for name in named if name not in found]
    assert not unnamed + stale, "\n".join(unnamed + stale)


def test_the_checkers_on_a_small_package(tmp_path):
    """An upward import inside a function is found with its file:line, one under
    TYPE_CHECKING is not; a 90-line function is long; the page's sections parse."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from pkg import high\ndef f():\n    from pkg.high import g\n")
    (pkg / "high.py").write_text("from pkg import low\ndef g():\n" + "    x = 1\n" * 89)
    layers = [("low", ["pkg", "pkg.low"]), ("high", ["pkg.high", "pkg.gone"])]
    ranks, problems = layer_ranks(pkg, layers)
    assert ranks == {"pkg": 0, "pkg.low": 0, "pkg.high": 1}
    assert len(problems) == 1 and "'pkg.gone'" in problems[0]
    assert upward_imports(pkg, ranks, layers) == ["pkg/low.py:5: pkg.low (low) imports pkg.high (high)"]
    assert long_definitions(pkg) == {"pkg.high.g": "pkg/high.py:2, 90 lines"}
    page = ("# T\n## Layers\n| rank | layer | modules |\n|---|---|---|\n"
            "| 1 | high | `pkg.high` |\n| 0 | low | `pkg`, `pkg.low` |\n"
            "## Long functions and classes\n- `pkg.high.g`: why.\n  more `why`\n## Next\n- `no`\n")
    assert doc_layers(page) == [("low", ["pkg", "pkg.low"]), ("high", ["pkg.high"])]
    assert doc_long_names(page) == ["pkg.high.g"]


# What the command line may import of the engine besides the public names of ``embedrag``.
CLI_ENGINE_IMPORTS = {"embedrag.engine.core.errors"}


def cli_engine_imports(root: Path) -> list[str]:
    """``file:line: module imports target`` for every import of an engine module by the CLI
    other than :data:`CLI_ENGINE_IMPORTS`: commands go through ``embedrag``'s public names."""
    engine = f"{root.name}.engine"
    return [f"{imp.path.relative_to(root.parent)}:{imp.line}: {imp.importer} imports {imp.target}"
            for imp in collect_imports(root)
            if imp.importer.startswith(f"{root.name}.cli") and not imp.type_checking
            and (imp.target == engine or imp.target.startswith(engine + "."))
            and imp.target not in CLI_ENGINE_IMPORTS]


def test_the_cli_imports_only_the_public_api():
    found = cli_engine_imports(PACKAGE_ROOT)
    assert not found, "\n".join(found)


def test_the_public_api_check_sees_an_internal_import(tmp_path):
    package = tmp_path / "pkg"
    for folder in ("engine", "engine/core", "engine/encoding", "cli"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "engine/core/errors.py").write_text("")
    (package / "engine/encoding/models.py").write_text("DEFAULT_MODEL = 'm'\n")
    (package / "cli/good.py").write_text("from pkg.engine.core.errors import x\nfrom pkg import y\n")
    (package / "cli/bad.py").write_text("def f():\n    from pkg.engine.encoding.models import DEFAULT_MODEL\n")
    global CLI_ENGINE_IMPORTS
    kept, CLI_ENGINE_IMPORTS = CLI_ENGINE_IMPORTS, {"pkg.engine.core.errors"}
    try:
        found = cli_engine_imports(package)
    finally:
        CLI_ENGINE_IMPORTS = kept
    assert len(found) == 1 and "pkg.cli.bad imports pkg.engine.encoding.models" in found[0]
