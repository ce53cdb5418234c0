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


def plugin_named_by(source: str) -> list[str]:
    """Where `source` reaches a module by name (`importlib.import_module`, `__import__`) or
    names the plugin in a string (a class path): each as `line N: what`. Docstrings may
    describe the plugin; code may not name it."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(
                node.func, "id", None)
            if called in ("import_module", "__import__"):
                found.append(f"line {node.lineno}: {called}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings and node.value.startswith(PLUGIN):
            found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_the_guard_sees_a_plugin_reached_by_name() -> None:
    source = ('"""Builds on hydra_plugins.degrade_launcher."""\n'
              'import importlib\n'
              'importlib.import_module("hydra_plugins.degrade_launcher")\n'
              'HERE = ("hydra_plugins.degrade_launcher.local_launcher.LocalLauncher",)\n'
              'module = __import__(name)\n')
    assert sorted(plugin_named_by(source)) == [
        "line 3: 'hydra_plugins.degrade_launcher'", "line 3: import_module",
        "line 4: 'hydra_plugins.degrade_launcher.local_launcher.LocalLauncher'",
        "line 5: __import__"]


def test_the_package_never_reaches_its_plugin_by_name() -> None:
    # No import by name and no class path in a string: the package finds its sweeper and
    # launchers through the entry point the plugin declares (pyproject.toml).
    found = {module_name(path): plugin_named_by(path.read_text(encoding="utf-8"))
             for path in ROOT.glob(f"{PACKAGE}/**/*.py")}
    assert {name: where for name, where in found.items() if where} == {}


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
