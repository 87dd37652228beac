"""The public API list of ``compresskit/__init__.py`` cannot drift: the lazy table (``_API`` and
``_SUBMODULES``) and its ``TYPE_CHECKING`` twin name the same things from the same modules, every name
resolves to the object its module defines, and every public name of DESIGN.md is exported."""

from __future__ import annotations

import ast
import importlib
import os
import re
import types
from pathlib import Path

import pytest

import compresskit as ck

INIT = Path(ck.__file__)
DESIGN = Path(os.environ.get("COMPRESSKIT_DESIGN", "/work/shared/DESIGN.md"))

# the names DESIGN.md's public API promises (its ``ck.`` calls and its register_* hooks), written out so
# the check runs where that file is not at hand; test_design_names_are_these_when_present keeps them true
DESIGN_NAMES = {
    "CompressConfig", "DistillConfig", "OBProxSG", "compress", "create_model", "distill", "layer_densities",
    "list_models", "load", "plan_widths", "shrink", "testing", "trace", "register_rule", "register_resizer",
    "register_importance", "register_sparsifier", "register_metric", "register_loss", "register_model",
}


def _type_checking_imports() -> dict[str, str]:
    """``{name: module}`` of every import under ``if TYPE_CHECKING:`` (``from compresskit import x``
    gives ``x: compresskit.x``)."""
    tree = ast.parse(INIT.read_text())
    (block,) = [node for node in tree.body if isinstance(node, ast.If)
                and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"]
    names: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), f"line {node.lineno}: only 'from ... import' belongs here"
        for alias in node.names:
            name = alias.asname or alias.name
            assert name not in names, f"{name} is imported twice under TYPE_CHECKING"
            names[name] = f"{node.module}.{name}" if node.module == "compresskit" else node.module
    return names


def _lazy_table() -> dict[str, str]:
    return {**ck._API, **{name: f"compresskit.{name}" for name in ck._SUBMODULES}}


def test_lazy_table_and_type_checking_twin_name_the_same_things_from_the_same_modules():
    twin, lazy = _type_checking_imports(), _lazy_table()
    assert sorted(set(lazy) - set(twin)) == [], "in _API / _SUBMODULES but not under TYPE_CHECKING"
    assert sorted(set(twin) - set(lazy)) == [], "under TYPE_CHECKING but not in _API / _SUBMODULES"
    assert {n: m for n, m in twin.items() if lazy[n] != m} == {}, "a name comes from different modules"
    assert set(ck.__all__) == {*lazy, "__version__"} and len(ck.__all__) == len(set(ck.__all__))


def test_every_public_name_resolves_to_what_its_module_defines():
    for name in ck.__all__:
        value = getattr(ck, name)
        if name in ck._SUBMODULES:
            assert value is importlib.import_module(f"compresskit.{name}")
        elif name in ck._API:
            assert value is getattr(importlib.import_module(ck._API[name]), name), name
    assert dir(ck) == ck.__all__


def test_no_function_is_shadowed_by_a_package_of_its_name():
    import compresskit.distillation  # noqa: F401  (the package of ck.distill, under its own name)
    import compresskit.surgery.surgery  # noqa: F401
    import compresskit.training.loop  # noqa: F401

    for name in ("distill", "shrink", "train"):
        assert isinstance(getattr(ck, name), types.FunctionType), name
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("compresskit.distill")


def test_design_public_names_are_exported():
    missing = sorted(DESIGN_NAMES - set(ck.__all__))
    assert missing == [], f"DESIGN.md promises {missing}; add them to compresskit/__init__.py"


@pytest.mark.skipif(not DESIGN.is_file(), reason=f"{DESIGN} is not here (set COMPRESSKIT_DESIGN)")
def test_design_names_are_these_when_present():
    text = DESIGN.read_text()
    named = set(re.findall(r"\bck\.(\w+)", text)) | set(re.findall(r"\b(register_\w+)\(", text))
    assert named <= DESIGN_NAMES, f"DESIGN.md names {sorted(named - DESIGN_NAMES)} too: add them above"
