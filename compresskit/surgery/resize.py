"""Resizers: after surgery cuts a module's tensors, its resizer makes the module's size attributes agree
(``out_channels``, ``num_features``, ``groups``...), so the unchanged forward code runs on the smaller
tensors.

``register_resizer(ModuleType, fn)`` adds one for a custom module; ``fn(new, old)`` gets the shrunk copy
(tensors already cut) and the original module, and updates ``new`` in place. Lookup follows the class
hierarchy (the nearest registered base class wins), so a subclass of ``nn.Conv2d`` is resized as a
convolution unless it registers its own. The built-in layers are registered here the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from compresskit._registry import Registry

__all__ = ["RESIZERS", "Resizer", "register_resizer", "resizer_for"]

Resizer = Callable[[nn.Module, nn.Module], None]
F = TypeVar("F", bound=Resizer)

#: ``module class → fn(new, old)``, looked up along the module's class hierarchy
RESIZERS: Registry[Resizer] = Registry("resizer")


def register_resizer(module_type: type[nn.Module], fn: F | None = None, *, replace: bool = False) -> F:
    """Make ``fn(new, old)`` update the size attributes of every shrunk ``module_type`` (or subclass).

    Without ``fn`` it is a decorator: ``@register_resizer(MyLayer)``. A class that already has another
    resizer raises :class:`~compresskit._registry.AlreadyRegisteredError` unless ``replace=True``.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_resizer: module_type must be an nn.Module subclass, got {module_type!r}")
    if fn is None:
        def decorator(f: F) -> F:
            return register_resizer(module_type, f, replace=replace)

        return decorator  # type: ignore[return-value]
    if not callable(fn):
        raise TypeError(f"register_resizer: fn must be callable as fn(new, old), got {type(fn).__name__}")
    RESIZERS.register(module_type, fn, replace=replace)
    return fn


def resizer_for(module: nn.Module) -> Resizer | None:
    """The resizer of ``module``'s class or its nearest registered base class, or ``None``."""
    return RESIZERS.find_type(type(module))


# -- the built-in layers ------------------------------------------------------------------------------
@register_resizer(nn.modules.conv._ConvNd)
def _resize_conv(new: nn.Module, old: nn.Module) -> None:
    """Conv and transposed conv: channels from the weight; a depthwise conv's ``groups`` follows them."""
    w = new.weight
    depthwise = old.groups > 1 and old.in_channels == old.groups
    if new.transposed:
        if depthwise:
            new.groups = w.shape[0]
        new.in_channels = w.shape[0]
        new.out_channels = w.shape[1] * new.groups
    else:
        if depthwise:
            mult = old.out_channels // old.in_channels
            new.groups = w.shape[0] // mult
        new.out_channels = w.shape[0]
        new.in_channels = w.shape[1] * new.groups


@register_resizer(nn.Linear)
def _resize_linear(new: nn.Module, old: nn.Module) -> None:
    new.out_features, new.in_features = new.weight.shape


@register_resizer(nn.modules.batchnorm._NormBase)
def _resize_norm(new: nn.Module, old: nn.Module) -> None:
    """Batch and instance norm: ``num_features`` from the affine weight or the running mean."""
    ref = new.weight if new.weight is not None else new.running_mean
    new.num_features = ref.shape[0]


@register_resizer(nn.GroupNorm)
def _resize_groupnorm(new: nn.Module, old: nn.Module) -> None:
    """Whole groups are dropped: the channels per group stay, ``num_groups`` follows."""
    per_group = old.num_channels // old.num_groups
    new.num_channels = new.weight.shape[0]
    new.num_groups = new.num_channels // per_group


@register_resizer(nn.LayerNorm)
def _resize_layernorm(new: nn.Module, old: nn.Module) -> None:
    if new.weight is not None:
        new.normalized_shape = tuple(new.weight.shape)


@register_resizer(nn.PReLU)
def _resize_prelu(new: nn.Module, old: nn.Module) -> None:
    new.num_parameters = new.weight.numel()


@register_resizer(nn.Embedding)
def _resize_embedding(new: nn.Module, old: nn.Module) -> None:
    new.embedding_dim = new.weight.shape[1]
