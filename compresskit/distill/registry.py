"""The loss registry: ``@register_loss("name")`` adds a loss that configs can name; ``get_loss`` builds it.

A registered object is either an ``nn.Module`` class (``get_loss(name, **kw)`` instantiates it) or a
function ``f(pred, target, **kw) -> Tensor`` (``get_loss`` returns it, with ``kw`` bound when given).
Built-in losses live in :mod:`compresskit.losses` and :mod:`compresskit.distill.adversarial`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_LOSSES: dict[str, Any] = {}
_BUILTIN_MODULES = ("compresskit.losses", "compresskit.distill.adversarial")
_builtins_loaded = False


def register_loss(name: str, *, override: bool = False) -> Callable[[T], T]:
    """Decorator: register a loss class or function under ``name``.

    >>> @register_loss("my_l1")
    ... def my_l1(pred, target):
    ...     return (pred - target).abs().mean()
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_loss: name must be a non-empty string, got {name!r}")

    def decorator(obj: T) -> T:
        if not callable(obj):
            raise TypeError(f"register_loss({name!r}): expected a loss class or function, "
                            f"got {type(obj).__name__}")
        if name in _LOSSES and _LOSSES[name] is not obj and not override:
            raise ValueError(f"loss {name!r} is already registered ({_describe(_LOSSES[name])}); "
                             "pass override=True to replace it")
        _LOSSES[name] = obj
        return obj

    return decorator


def get_loss(name: str | Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """The loss registered as ``name``, built with ``kwargs``; a callable passes through unchanged."""
    if callable(name) and not isinstance(name, str):
        if kwargs:
            raise TypeError("get_loss: keyword arguments are only used with a registered loss name")
        return name
    _load_builtins()
    if name not in _LOSSES:
        raise KeyError(f"unknown loss {name!r}; registered losses: {', '.join(sorted(_LOSSES))}")
    obj = _LOSSES[name]
    if isinstance(obj, type):
        return obj(**kwargs)
    return functools.partial(obj, **kwargs) if kwargs else obj


def list_losses() -> list[str]:
    """Names of every registered loss, sorted."""
    _load_builtins()
    return sorted(_LOSSES)


def _load_builtins() -> None:
    """The core's losses, then the installed plugins' (discovered once, as for models)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        from compresskit.plugins import load_plugins

        load_plugins()


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
