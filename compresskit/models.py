"""Model registry (timm-style): plugins register factories by name; ``create_model`` builds and loads them.

Checkpoint loading is kept out of the models: ``create_model(name, checkpoint=path)`` builds the network,
then loads the file strictly, accepting a bare state_dict or ``{"state_dict": ...}``.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compresskit._registry import Registry

__all__ = [
    "MODELS",
    "ModelInfo",
    "register_model",
    "create_model",
    "list_models",
    "model_info",
    "registered_name",
    "load_state_dict_strict",
    "CheckpointMismatchError",
]

LossFn = Callable[[Any, Any], torch.Tensor]


@dataclass
class ModelInfo:
    """What a plugin says about one registered model."""

    name: str
    factory: Callable[..., nn.Module]
    task: str | None = None
    #: ``loss(output, batch) -> scalar`` used by ``compress`` when the user gives none
    default_loss: LossFn | None = None
    #: ``example_inputs(batch) -> tuple`` turning a loader batch into the model's positional inputs
    inputs_from_batch: Callable[[Any], tuple] | None = None
    description: str = ""
    plugin: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


#: every registered model, by name (two registrations are the same when they register the same factory)
MODELS: Registry[ModelInfo] = Registry("model", identity=lambda info: info.factory)

# attribute set on every module built by create_model, so a plain nn.Module remembers where it came from
_NAME_ATTR = "_compresskit_model"


def register_model(
    name: str | None = None,
    *,
    task: str | None = None,
    default_loss: LossFn | None = None,
    inputs_from_batch: Callable[[Any], tuple] | None = None,
    description: str = "",
    tags: tuple[str, ...] = (),
    replace: bool = False,
    overwrite: bool | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``factory(**kwargs) -> nn.Module`` under ``name`` (default: its name).

    A name registered to another factory raises :class:`~compresskit._registry.AlreadyRegisteredError`
    unless ``replace=True`` (``overwrite=`` is its deprecated old name).
    """
    if overwrite is not None:
        warnings.warn("register_model(overwrite=...) is deprecated; use replace=...", DeprecationWarning,
                      stacklevel=2)
        replace = replace or overwrite

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or factory.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"register_model: name must be a non-empty string, got {key!r}")
        info = ModelInfo(key, factory, task, default_loss, inputs_from_batch,
                         description or (factory.__doc__ or "").strip().split("\n")[0],
                         factory.__module__.split(".")[0], tuple(tags))
        MODELS.register(key, info, replace=replace)
        return factory

    return decorator


def list_models(pattern: str | None = None) -> list[str]:
    """Names of all registered models (plugins discovered on first call), optionally filtered by a glob."""
    return [n for n in MODELS.names() if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_info(name: str) -> ModelInfo:
    """What was registered as ``name``; ``KeyError`` listing the registered models otherwise."""
    return MODELS.get(name)


def create_model(name: str, checkpoint: str | os.PathLike | Mapping | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``; load ``checkpoint`` strictly when given."""
    info = model_info(name)
    model = info.factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory of model {name!r} returned {type(model).__name__}, expected an nn.Module")
    object.__setattr__(model, _NAME_ATTR, (name, dict(kwargs)))
    if checkpoint is not None:
        load_state_dict_strict(model, checkpoint)
    return model


def registered_name(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """``(name, kwargs)`` if ``model`` was built by :func:`create_model`, else None."""
    return getattr(model, _NAME_ATTR, None)


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes differ from the model's."""


def _read_state_dict(source: str | os.PathLike | Mapping) -> Mapping[str, torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        if path.stat().st_size == 0:
            raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes): the write that made it was cut "
                             "short or the disk was full; use another copy of the weights")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"checkpoint {str(path)!r} could not be read as a torch file: {e}") from e
    else:
        obj = source
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ValueError("checkpoint: expected a state_dict (a mapping of names to tensors) "
                         "or {'state_dict': state_dict}")
    return obj


def load_state_dict_strict(model: nn.Module, source: str | os.PathLike | Mapping) -> nn.Module:
    """Load ``source`` into ``model`` with strict key and shape checks; the error lists every difference."""
    state = _read_state_dict(source)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        def block(title: str, items: list[str]) -> str:
            if not items:
                return ""
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:20]) + more

        raise CheckpointMismatchError(
            f"checkpoint does not match {type(model).__name__}:"
            + block("missing from checkpoint", missing)
            + block("unexpected in checkpoint", unexpected)
            + block("shape mismatches", shapes)
        )
    model.load_state_dict(state, strict=True)
    return model
