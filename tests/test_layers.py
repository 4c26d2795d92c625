"""Layers point one way: the import graph of ``src/unlearnkit`` (read with ``ast``, every import statement
including those inside functions, but not ``if TYPE_CHECKING:`` blocks) has no cycle, nothing below the front
door imports it, and only the command line imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unlearnkit"

# The command line: only it (and ``python -m unlearnkit``) may import it.
CLI = ("unlearnkit.cli", "unlearnkit.__main__")
# The front door: the package root and api.py (train, accuracy_report).
FRONT_DOOR = ("unlearnkit", "unlearnkit.api")
# Compositions on top of the front door that may use it: the demo, benchmark suites, the audit.
ABOVE_FRONT_DOOR = ("unlearnkit.demo", "unlearnkit.bench", "unlearnkit.audit")


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from P import name`` counts as P.name where that is a module)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for target in targets:
                while target and target not in modules:  # `import unlearnkit.x.y` of a name: its module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or (p != "unlearnkit" and module.startswith(p + ".")) for p in prefixes)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if _in(target, CLI) and not _in(module, CLI):
                out.append(f"{module} imports the command line ({target})")
            elif _in(target, FRONT_DOOR) and not _in(module, CLI + FRONT_DOOR + ABOVE_FRONT_DOOR):
                out.append(f"{module} imports the front door ({target})")
    return out


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between top-level modules and sub-packages (``unlearnkit.sisa`` for all of ``sisa/``)."""
    def top(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    return out


def test_packages_do_not_import_each_other_both_ways():
    """e.g. ``hybrid/`` builds on ``sisa/``, so nothing in ``sisa/`` imports ``hybrid/``."""
    assert cycles(package_graph(import_graph())) == []


def test_lower_layers_never_import_higher_ones():
    assert layer_violations(import_graph()) == []


def test_the_check_sees_cycles_and_upward_imports():
    graph = {"unlearnkit.a": {"unlearnkit.b"}, "unlearnkit.b": {"unlearnkit.c"}, "unlearnkit.c": {"unlearnkit.a"},
             "unlearnkit.methods.x": {"unlearnkit.api"}, "unlearnkit.sisa.model": {"unlearnkit"},
             "unlearnkit.hybrid": {"unlearnkit.cli.requests"}, "unlearnkit.cli": {"unlearnkit.api"}}
    assert cycles(graph) == [["unlearnkit.a", "unlearnkit.b", "unlearnkit.c"]]
    assert cycles(package_graph({"unlearnkit.sisa.model": {"unlearnkit.hybrid.cost"},
                                 "unlearnkit.hybrid.service": {"unlearnkit.sisa.store"}})) == [
        ["unlearnkit.hybrid", "unlearnkit.sisa"]]
    assert layer_violations(graph) == [
        "unlearnkit.hybrid imports the command line (unlearnkit.cli.requests)",
        "unlearnkit.methods.x imports the front door (unlearnkit.api)",
        "unlearnkit.sisa.model imports the front door (unlearnkit)",
    ]


def test_scripts_use_public_modules_and_no_absolute_paths():
    """Benchmark scripts import no private unlearnkit module (``unlearnkit._util``: they use ``unlearnkit.results``)
    and default to no absolute path of one machine."""
    found = []
    for path in sorted((PACKAGE.parents[1] / "benchmarks").glob("*.py")) + sorted(
            (PACKAGE.parents[1] / "scripts").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unlearnkit._"):
                found.append(f"{path.name}: imports {node.module}")
            if isinstance(node, ast.Import) and any(a.name.startswith("unlearnkit._") for a in node.names):
                found.append(f"{path.name}: imports a private module")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
                    ("/work/", "/home/", "/tmp/", "/root/")):
                found.append(f"{path.name}: {node.value!r}")
    assert found == []


@pytest.mark.parametrize("module, imported", [("unlearnkit.methods.retrain", "unlearnkit.models"),
                                              ("unlearnkit.cli", "unlearnkit.cli.core")])
def test_the_graph_is_read_from_the_source(module, imported):
    assert imported in import_graph()[module]
