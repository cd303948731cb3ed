"""The package map of CONVENTIONS.md, enforced: which folder may import which, and no import
cycles between modules (module-level imports; a function-level import is a deliberate, one-way
late binding)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("meterwax", "flows", "operators", "sinks", "schemas")
# What each package may import from the others (CONVENTIONS.md, "Packages").
ALLOWED = {
    "schemas": set(),
    "operators": {"schemas"},
    "sinks": {"schemas", "operators"},
    "flows": {"schemas", "operators", "sinks"},
    "meterwax": {"schemas", "operators", "sinks", "flows"},
}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for pkg in PACKAGES:
        # Top-level modules, and the modules of subpackages (e.g. sinks/clickhouse/), named by
        # their dotted path; a subpackage's __init__ is the subpackage itself.
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("").parts
            if rel[-1] == "__init__" and len(rel) > 2:
                rel = rel[:-1]
            deps: set[str] = set()
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ImportFrom) and node.module:
                    if node.module in PACKAGES:
                        deps |= {f"{node.module}.{a.name}" for a in node.names}
                    else:
                        deps.add(node.module)
                elif isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
            graph[".".join(rel)] = {d for d in deps if d.split(".")[0] in PACKAGES}
    return graph


def test_each_package_imports_only_what_the_conventions_allow() -> None:
    wrong = sorted((module, dep) for module, deps in _graph().items() for dep in deps
                   if dep.split(".")[0] != module.split(".")[0]
                   and dep.split(".")[0] not in ALLOWED[module.split(".")[0]])
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue  # a package's __init__ or a name, not a module file
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
    assert len(graph) > 30  # the walk saw the real tree


def _documented(path: Path) -> dict[str, set[str]]:
    """The "may import" column of a markdown table whose rows start with a package folder."""
    rules: dict[str, set[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        folder = cells[0].strip("`").rstrip("/")
        if line.startswith("| `") and folder in PACKAGES:
            rules[folder] = {name for name in PACKAGES if f"`{name}`" in cells[-1]}
    return rules


def test_the_readme_and_conventions_tables_state_the_enforced_rules() -> None:
    assert _documented(ROOT / "README.md") == ALLOWED
    assert _documented(ROOT / "CONVENTIONS.md") == ALLOWED
