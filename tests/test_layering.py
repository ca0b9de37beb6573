"""The package's imports point one way (DESIGN §2): no import circle between files, and no import
from a lower layer to a higher one.

Layers, bottom to top: ``errors``, ``_checks``, ``_io``, ``_progress``, ``_distributed``,
``datafiles`` < ``kernels`` < ``attention``, ``budget`` <
``models`` < ``importance`` < ``sparsity`` < ``generation`` < ``evaluation``, ``bench`` <
``integrations``, ``cli``. Every import counts, also one inside a function (a lazy import is still
a dependency); only ``if TYPE_CHECKING:`` imports, which never run, are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "adaptive_dllm"
LAYERS: dict[str, int] = {
    "errors": 0, "_checks": 0, "_io": 0, "_progress": 0, "_distributed": 0, "datafiles": 0,
    "kernels": 1,
    "attention": 2, "budget": 2,
    "models": 3,
    "importance": 4,
    "sparsity": 5,
    "generation": 6,
    "evaluation": 7, "bench": 7,
    "integrations": 8, "cli": 8,
}
#: Known imports against the layering, each with its reason; a new one fails the test.
ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module name an import statement of ``tree`` refers to (TYPE_CHECKING blocks
    skipped); ``from a import b`` yields ``a.b`` and ``a`` (b may be a module or a name)."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        names = _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
        targets = set()
        for name in names:
            if name in modules and name != module:
                targets.add(name)
        # ``from pkg import submodule``: the submodule, not also the package __init__.
        targets -= {t for t in targets if any(o.startswith(t + ".") for o in targets)
                    and not _binds_names(t, names)}
        graph[module] = targets
    return graph


def _binds_names(package: str, names: list[str]) -> bool:
    """Whether ``package`` is imported for a name it defines rather than only its submodules."""
    modules = _modules()
    return any(n.startswith(package + ".") and n not in modules for n in names)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package root re-exports the public API from every layer
    return LAYERS[parts[1]]


def test_every_subpackage_has_a_layer():
    top = {m.split(".")[1] for m in _modules() if m.count(".") >= 1}
    assert top <= set(LAYERS), sorted(top - set(LAYERS))


def test_imports_point_down():
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            lo, hi = _layer(module), _layer(target)
            if lo is None or hi is None or hi <= lo or (module, target) in ALLOWED:
                continue
            bad.append(f"{module} -> {target}")
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(bad))


def test_no_import_circle_between_files():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("code, expected", [
    ("from adaptive_dllm.sparsity import session", {"adaptive_dllm.sparsity.session"}),
    ("if TYPE_CHECKING:\n    from adaptive_dllm.cli import main", set()),
    ("def f():\n    from adaptive_dllm.generation.api import generate",
     {"adaptive_dllm.generation.api"}),
])
def test_the_import_reader(code, expected):
    """The checks above see lazy imports and skip TYPE_CHECKING ones (so they can fail)."""
    modules = _modules()
    names = _imported_names(ast.parse(code), "adaptive_dllm.x", False)
    found = {n for n in names if n in modules}
    found -= {t for t in found if any(o.startswith(t + ".") for o in found)}
    assert found == expected


def test_every_import_of_the_package_resolves():
    """Each ``from adaptive_dllm.X import name`` in the package, ``scripts/`` and ``benchmarks/``
    names something X has, lazy imports inside functions included: those run only on the path
    that needs them (a CUDA-only branch, say), so a name moved between modules would otherwise
    fail first on a GPU. (A stale import of ``triton_available`` from ``attention.api`` broke
    cached sparse steps on CUDA this way.)"""
    import importlib

    root = SRC.parent
    files = {**_modules(), **{str(p.relative_to(root)): p for folder in ("scripts", "benchmarks")
                              for p in sorted((root / folder).rglob("*.py"))}}
    missing = []
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] == PACKAGE):
                continue
            target = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name == "*" or hasattr(target, alias.name):
                    continue
                try:  # a submodule not yet imported as an attribute
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ModuleNotFoundError:
                    missing.append(f"{module}:{node.lineno}: {node.module}.{alias.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)
