"""Pydantic configuration for every stage; loads from and dumps to YAML or JSON.

Every run writes its resolved config next to its outputs (``Config.dump``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from compresskit.io import atomic_write_text

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        """Read a ``.json``, ``.yaml`` or ``.yml`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _yaml().safe_load(text) or {}
        elif path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {str(path)!r}: expected a .json, .yaml or .yml file")
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r}: expected a mapping at the top level")
        return cls.model_validate(data)

    def dump(self, path: str | os.PathLike) -> Path:
        """Write the resolved config (atomically); YAML when the suffix says so, else JSON."""
        path = Path(path)
        data: dict[str, Any] = self.model_dump(mode="json")
        if path.suffix.lower() in (".yaml", ".yml"):
            text = _yaml().safe_dump(data, sort_keys=False)
        else:
            text = json.dumps(data, indent=2) + "\n"
        return atomic_write_text(text, path)


def _yaml():
    try:
        import yaml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("YAML configs need PyYAML: pip install 'compresskit[yaml]'") from e
    return yaml
