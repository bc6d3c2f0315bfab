"""yolojax's import graph: no cycles, and every import points down the layer order of DESIGN.md.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
statement of the package, those inside functions included (a function-local import is still
a dependency: it only hides it from the import-time order).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "yolojax"

# DESIGN.md's layers, leaves first and commands last: a module may import its own layer's
# modules and those of the layers before it, never one of a later layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("yolojax.console", "yolojax.config", "yolojax.configs", "yolojax.runtime"),
    ("yolojax.ops",),
    ("yolojax.models",),
    ("yolojax.loss",),
    ("yolojax.data",),
    ("yolojax.parallel",),
    ("yolojax.weights",),
    ("yolojax.plots",),
    ("yolojax.inference",),
    ("yolojax.evaluation",),
    ("yolojax.train",),
    ("yolojax.cli", "yolojax.val", "yolojax.predict", "yolojax.export", "yolojax.convert", "yolojax.plan",
     "yolojax.train.__main__", "yolojax.__main__", "yolojax"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _target(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The yolojax modules ``module`` imports anywhere in its source: ``from pkg import name``
    counts as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "yolojax")
        elif isinstance(node, ast.ImportFrom):
            target = _target(module, node, is_package)
            if target.split(".")[0] != "yolojax":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
    return {m for m in out if m != module}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: {t for t in imports_of(m, p, modules) if t in modules} for m, p in modules.items()}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming ``module``."""
    best, index = "", None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, index = prefix, i
    if index is None:
        raise AssertionError(f"{module} is in no layer of LAYERS (add it to DESIGN.md's layout and here)")
    return index


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_graph(graph: dict[str, set[str]], depth: int) -> dict[str, set[str]]:
    """The graph with each module collapsed to its package ``depth`` levels below yolojax
    (yolojax.data.sources.yolo at depth 2 -> yolojax.data.sources); edges within one node dropped."""
    def node(m: str) -> str:
        return ".".join(m.split(".")[: depth + 1])

    out: dict[str, set[str]] = {}
    for m, targets in graph.items():
        out.setdefault(node(m), set()).update(node(t) for t in targets if node(t) != node(m))
    return out


def test_no_import_cycle_between_modules():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


@pytest.mark.parametrize("depth", [1, 2])
def test_no_import_cycle_between_packages(depth):
    cycle = find_cycle(package_graph(import_graph(), depth))
    assert cycle is None, f"package import cycle: {' -> '.join(cycle)}"


def test_imports_follow_the_layer_order():
    wrong = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                   for m, targets in import_graph().items() for t in targets if layer_of(t) > layer_of(m))
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_plots_only_draw():
    drawn_from = {t for m, targets in import_graph().items() if m.startswith("yolojax.plots") for t in targets}
    assert not {t for t in drawn_from if t.startswith(("yolojax.train", "yolojax.evaluation", "yolojax.data"))}
