"""Import rules of the fsl_app package (DESIGN.md section 1), read from the source with ``ast``.

Every ``import`` counts, at module level or inside a function (a lazy import is still a dependency); imports under
``if TYPE_CHECKING:`` do not (they never run). An import of a name from a package (``from fsl_app.store import
Project``) is an edge to the package's ``__init__``, so re-exports take part in circles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "fsl_app"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE
NOT_MODULES = ("bundle_scripts",)  # files shipped inside exported bundles and run there, never imported by fsl_app

FRONT_ENDS = ("fsl_app.app", "fsl_app.views")
TRAINING_CODE = ("fsl_app.strategies", "fsl_app.runs", "fsl_app.features", "fsl_app.evaluation",
                 "fsl_app.training_job", "fsl_app.export", "fsl_app.cli")


def module_files() -> dict[str, Path]:
    """Module name -> file for every module of the package (a package's ``__init__.py`` under the package name)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        relative = path.relative_to(PACKAGE_DIR.parent)
        if "__pycache__" in relative.parts or any(part in NOT_MODULES for part in relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _ImportCollector(ast.NodeVisitor):
    """Absolute names of everything a module imports, TYPE_CHECKING blocks aside."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str | None]] = []  # (module, imported name or None)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, None) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")[:len(self.package.split(".")) - (node.level - 1)]
            base = ".".join(parent + ([node.module] if node.module else []))
        self.found += [(base, alias.name) for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> what it imports: modules of the package by full name, anything else by its top-level name."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        collector = _ImportCollector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        targets = set()
        for base, name in collector.found:
            if name is not None and f"{base}.{name}" in files:  # `from package import submodule`
                targets.add(f"{base}.{name}")
            elif base.split(".")[0] == PACKAGE:
                targets.add(_nearest_module(base, files))
            elif base != "__future__":
                targets.add(base.split(".")[0])
        graph[module] = targets - {module}
    return graph


def _nearest_module(name: str, files: dict[str, Path]) -> str:
    while name not in files and "." in name:
        name = name.rpartition(".")[0]
    return name


def _is_in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _internal(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {target for target in targets if target in graph} for module, targets in graph.items()}


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports directly or indirectly -> the module that imports it (to show the chain)."""
    parents, stack = {}, [start]
    while stack:
        module = stack.pop()
        for target in graph[module]:
            if target not in parents and target != start:
                parents[target] = module
                stack.append(target)
    return parents


def _chain(parents: dict[str, str], start: str, end: str) -> str:
    chain = [end]
    while chain[-1] != start:
        chain.append(parents[chain[-1]])
    return " -> ".join(reversed(chain))


def find_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each as a sorted list."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_walk_sees_the_whole_package(graph):
    assert {"fsl_app", "fsl_app.cli", "fsl_app.store.workspace", "fsl_app.export.formats"} <= set(graph)
    assert "fsl_app.store.workspace" in graph["fsl_app.cli.store_actions"]  # `from ..store.workspace import ...`
    assert "torch" in graph["fsl_app.export.predictors"]
    assert "fsl_app.export.predictors" in graph["fsl_app.export"]  # imported inside the package's __getattr__
    assert "fsl_app.export.predictors" not in graph["fsl_app.store.workspace"]


def test_no_import_circles(graph):
    circles = find_circles(_internal(graph))
    assert not circles, "import circles (break each by moving the shared code down a layer):\n" + "\n".join(
        " <-> ".join(group) for group in circles)


def test_core_never_imports_streamlit_or_the_studio(graph):
    offenders = [f"{module} imports {target}" for module, targets in graph.items() if not _is_in(module, FRONT_ENDS)
                 for target in targets if target == "streamlit" or _is_in(target, FRONT_ENDS)]
    assert not offenders, offenders


def test_store_never_reaches_training_code_or_fronts(graph):
    internal = _internal(graph)
    offenders = []
    for module in (m for m in graph if _is_in(m, ("fsl_app.store",))):
        parents = _reachable(internal, module)
        offenders += [_chain(parents, module, target) for target in parents if _is_in(target, TRAINING_CODE)]
    assert not offenders, "the store imports only images / dataset:\n" + "\n".join(offenders)


def test_export_never_reaches_a_front(graph):
    internal = _internal(graph)
    offenders = []
    for module in (m for m in graph if _is_in(m, ("fsl_app.export",))):
        parents = _reachable(internal, module)
        offenders += [_chain(parents, module, target) for target in parents
                      if _is_in(target, ("fsl_app.cli",) + FRONT_ENDS)]
    assert not offenders, "export never imports a front end:\n" + "\n".join(offenders)


def test_studio_never_imports_torch_directly(graph):
    offenders = [module for module, targets in graph.items() if _is_in(module, FRONT_ENDS) and "torch" in targets]
    assert not offenders, f"the studio calls core functions instead of torch: {offenders}"


def test_the_rules_catch_a_circle_and_a_forbidden_import():
    """The checks above can fail: a made-up graph with a circle and a store module that reaches runs."""
    made_up = {"fsl_app.a": {"fsl_app.b"}, "fsl_app.b": {"fsl_app.a"}, "fsl_app.store.x": {"fsl_app.dataset"},
               "fsl_app.dataset": {"fsl_app.runs"}, "fsl_app.runs": set()}
    assert find_circles(made_up) == [["fsl_app.a", "fsl_app.b"]]
    parents = _reachable(made_up, "fsl_app.store.x")
    assert _chain(parents, "fsl_app.store.x", "fsl_app.runs") == "fsl_app.store.x -> fsl_app.dataset -> fsl_app.runs"
