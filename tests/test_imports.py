"""The project's imports point one way: no circle, and the package never imports its plugin.

Read from the source (every import statement, those inside functions too), so a circle
hidden behind a function-level import is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE, PLUGIN = "degradation", "hydra_plugins"


def module_name(path: Path) -> str:
    """`degradation/training/loop.py` -> `degradation.training.loop`."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports."""
    paths = [*ROOT.glob(f"{PACKAGE}/**/*.py"), *ROOT.glob(f"{PLUGIN}/**/*.py")]
    modules = {module_name(path): path for path in paths}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            imported.update(target for target in targets if target in modules)
        imported.discard(name)
        graph[name] = imported
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_guard_sees_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph()
    assert graph.get("degradation.cli")  # the graph was read
    assert circles(graph) == []


def test_the_package_never_imports_its_hydra_plugin() -> None:
    graph = import_graph()
    wrong = {name: sorted(target for target in targets if target.startswith(PLUGIN))
             for name, targets in graph.items() if name.startswith(PACKAGE)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_names_that_meant_two_things_are_defined_once() -> None:
    # A tensor and a DataFrame, two Markdown renderers, a function beside a class: each
    # name now has one meaning.
    defined: dict[str, list[str]] = {}
    for path in [*ROOT.glob(f"{PACKAGE}/**/*.py"), *ROOT.glob(f"{PLUGIN}/**/*.py")]:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                defined.setdefault(node.name, []).append(module_name(path))
    for name in ("gradient_norms", "markdown_table", "render_markdown", "progress"):
        assert len(defined.get(name, [])) <= 1, (name, defined[name])


def reached(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every project module `start` imports, directly or through others."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for other in graph[stack.pop()] - seen:
            seen.add(other)
            stack.append(other)
    return seen


def test_analysis_reads_runs_and_neither_launches_nor_trains_nor_benchmarks() -> None:
    # Analysis reads what runs left in their folders: it never reaches the launcher, the
    # training loop, the benchmark or the command line, even through another module
    # (evaluate.py reuses the training step's evaluation, and only that).
    graph = import_graph()
    forbidden = ("degradation.bench", "degradation.launch", "degradation.training.loop",
                 "degradation.cli")
    analysis = [name for name in graph if name.startswith("degradation.analysis")]
    assert "degradation.analysis.watch" in analysis  # the graph was read
    wrong = {name: sorted(target for target in reached(graph, name)
                          if any(target == module or target.startswith(f"{module}.")
                                 for module in forbidden))
             for name in analysis}
    assert {name: targets for name, targets in wrong.items() if targets} == {}
