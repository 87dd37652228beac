"""The house's floors, read from the source: which compresskit package may import which.

Every ``import`` of every core module is read with ``ast`` (imports inside functions too; those under
``if TYPE_CHECKING:`` never run and are left out) and mapped to its package (``compresskit.plan``,
``compresskit.report``, ...). The rules:

- ``compresskit.measure`` is the ground floor: it imports no other compresskit package but the two
  helpers every floor uses (``_modes``, ``io``);
- planning (``plan/``), training (``train/``) and the report never import ``sparsify/``;
- the package import graph has no cycle. ``compresskit/__init__.py`` is left out: its lazy public API
  names every module by string and imports on first use.

Edges that other work of House III removes are listed in ``_PENDING`` with who removes them; each must
still exist (delete its line when it is gone), so the list cannot go stale.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import networkx as nx
import pytest

import compresskit

ROOT = Path(compresskit.__file__).parent
_GROUND = {"compresskit.measure", "compresskit._modes", "compresskit.io"}
_NO_SPARSIFY = ("compresskit.plan", "compresskit.training", "compresskit.report")

#: package edges that other House III work removes: (importer package, imported package) -> who and why
_PENDING = {
}


def _modules() -> dict[str, Path]:
    """``{module name: file}`` of every core module but the package's own ``__init__``."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts == ("compresskit", "__init__"):
            continue
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _package(module: str) -> str:
    """``compresskit.plan.verify`` -> ``compresskit.plan``; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def _imports(path: Path, module: str, known: set[str]) -> list[str]:
    """The compresskit modules ``path`` imports (a name of the lazy API resolves to no module)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    if f"{base}.{alias.name}" in known:  # ``from compresskit import pipeline``
                        found.append(f"{base}.{alias.name}")
                    elif base.startswith("compresskit."):
                        found.append(base)
            elif isinstance(child, ast.Import):
                found.extend(a.name for a in child.names if a.name.startswith("compresskit."))
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """``{(importer package, imported package): ["importer module -> imported module", ...]}``."""
    modules = _modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in modules.items():
        for target in _imports(path, module, set(modules)):
            a, b = _package(module), _package(target)
            if a != b and b != "compresskit":
                edges.setdefault((a, b), []).append(f"{module} -> {target}")
    return edges


def test_every_core_module_imports():
    names = [m.name for m in pkgutil.walk_packages(compresskit.__path__, "compresskit.")]
    assert "compresskit.measure.clock" in names and "compresskit.plan.verify" in names
    for name in names:
        importlib.import_module(name)


def test_the_reader_finds_imports_in_functions_and_skips_type_checking(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("from typing import TYPE_CHECKING\nimport compresskit.io\n"
                   "if TYPE_CHECKING:\n    from compresskit.stages import State\n"
                   "def f():\n    from compresskit.plan.metric import get_metric\n"
                   "    from compresskit import pipeline, compress\n")
    known = {"compresskit.pipeline", "compresskit.io", "compresskit.plan.metric"}
    assert _imports(src, "compresskit.x", known) == ["compresskit.io", "compresskit.plan.metric",
                                                     "compresskit.pipeline"]


def test_measure_is_the_ground_floor():
    upward = {via for (a, b), vias in _edges().items() if a == "compresskit.measure" and b not in _GROUND
              for via in vias}
    assert not upward, f"compresskit.measure imports a higher floor: {sorted(upward)}"


@pytest.mark.parametrize("package", _NO_SPARSIFY)
def test_no_import_into_sparsify(package):
    edge = (package, "compresskit.sparsify")
    vias = _edges().get(edge, [])
    if edge in _PENDING:
        assert vias, f"{edge} is gone: delete it from _PENDING ({_PENDING[edge]})"
        return
    assert not vias, f"{package} imports sparsify/: {vias}"


def test_the_package_graph_has_no_cycle():
    edges = _edges()
    stale = [e for e in _PENDING if e not in edges]
    assert not stale, f"these pending edges are gone: delete them from _PENDING: {stale}"
    graph = nx.DiGraph([e for e in edges if e not in _PENDING])
    cycles = list(nx.simple_cycles(graph))
    shown = [" -> ".join([*c, c[0]]) + "  via " + "; ".join(edges[(c[i], c[(i + 1) % len(c)])][0]
                                                          for i in range(len(c))) for c in cycles[:5]]
    assert not cycles, f"{len(cycles)} import cycles among compresskit packages, e.g.:\n" + "\n".join(shown)
