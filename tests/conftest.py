"""Shared test set-up: tests import from each other's folder (``from zoo import ...``) under pytest's
``--import-mode=importlib`` (set in pyproject.toml so that the core's and the plugins' test files may share
basenames such as ``test_cli.py``)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


import pytest  # noqa: E402


@pytest.fixture
def isolated_registries():
    """Registrations made by a test (losses, models, channel rules) are undone afterwards, so code that
    registers under a fixed name (the docs' examples) can run in several tests of one process."""
    import compresskit as ck
    from compresskit import registry
    from compresskit.distill import registry as losses
    from compresskit.graph import rules

    ck.list_models(), ck.list_losses()  # builtins and plugins are loaded before the snapshot
    tables = [registry._MODELS, losses._LOSSES, rules._MODULE_RULES, rules._FUNCTION_RULES,
              rules._METHOD_RULES]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)
