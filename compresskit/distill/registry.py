"""Losses by name: ``@register_loss("name")`` adds a loss that configs can name; ``get_loss`` builds it.

A registered object is either an ``nn.Module`` class (``get_loss(name, **kw)`` instantiates it) or a
function ``f(pred, target, **kw) -> Tensor`` (``get_loss`` returns it, with ``kw`` bound when given).
The table is :data:`compresskit.losses.LOSSES`; the built-in losses are those of :mod:`compresskit.losses`
and :mod:`compresskit.distill.adversarial` (imported here, so they are always registered), the plugins'
are discovered on the first lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from compresskit.distill import adversarial as _adversarial  # noqa: F401  (registers "gan")
from compresskit.losses import LOSSES, register_loss

__all__ = ["LOSSES", "register_loss", "get_loss", "list_losses"]


def get_loss(name: str | Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """The loss registered as ``name``, built with ``kwargs``; a callable passes through unchanged."""
    if callable(name) and not isinstance(name, str):
        if kwargs:
            raise TypeError("get_loss: keyword arguments are only used with a registered loss name")
        return name
    obj = LOSSES.get(name)
    if isinstance(obj, type):
        return obj(**kwargs)
    return functools.partial(obj, **kwargs) if kwargs else obj


def list_losses() -> list[str]:
    """Names of every registered loss, sorted."""
    return LOSSES.names()
