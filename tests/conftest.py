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
    """Registrations made by a test (models, losses, channel rules, resizers, importance criteria,
    sparsifiers, cost measures) are undone afterwards, so code that registers under a fixed name (the
    docs' examples) can run in several tests of one process."""
    import contextlib

    import compresskit as ck
    from compresskit.graph.rules import RULES
    from compresskit.losses import LOSSES
    from compresskit.models import MODELS
    from compresskit.plan.importance import IMPORTANCES
    from compresskit.plan.metric import METRICS
    from compresskit.sparsify.auto import SPARSIFIERS
    from compresskit.surgery.resize import RESIZERS

    ck.load_plugins()  # plugins are registered before the snapshots, so they stay registered
    with contextlib.ExitStack() as stack:
        for table in (MODELS, LOSSES, RULES, RESIZERS, IMPORTANCES, SPARSIFIERS, METRICS):
            stack.enter_context(table.snapshot())
        yield
