"""The package's shape: layers import downwards only, no import loops, short functions and modules.

These are the rules docs/architecture.md states; a change that breaks one should say why here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minconv_cli"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450
# Each layer may import its own modules and those of the layers listed before it.
LAYERS = ("core", "compat", "data", "models", "training", "rollout", "evaluate", "maps", "simulate")
TOP = ("commands", "cli", "__main__", "__init__")  # the CLI may import every layer


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(path: Path) -> set[str]:
    """Package modules `path` imports anywhere (function-level too), except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minconv_cli"):
            names |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("minconv_cli")}
    return names


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {d for d in _imports(p) if d in mods and d != m} for m, p in mods.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_module_is_part_of_an_import_loop():
    graph = _graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    loops = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a))
    assert loops == []


def test_layers_import_only_downwards():
    wrong = []
    for module, deps in _graph().items():
        layer = _layer(module)
        if layer in TOP:
            continue
        allowed = set(LAYERS[: LAYERS.index(layer) + 1]) if layer in LAYERS else {layer}
        wrong += [f"{module} imports {d}" for d in deps if _layer(d) not in allowed | {"__init__"}]
    assert wrong == []


def test_the_model_spec_and_the_compat_module_are_leaves():
    graph = _graph()
    assert graph["minconv_cli.models.spec"] == set()
    assert {_layer(d) for d in graph["minconv_cli.compat"]} <= {"core"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.name))
def test_functions_and_modules_are_short(path: Path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
