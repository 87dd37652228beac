"""Shared test set-up: tests import from each other's folder (``from zoo import ...``) under pytest's
``--import-mode=importlib`` (set in pyproject.toml so that the core's and the plugins' test files may share
basenames such as ``test_cli.py``)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
