"""The channel-rule table: :func:`register_rule` declares how an op or module moves channels,
:func:`lookup_rule` finds the rule of an fx node. Rules live in one :class:`~compresskit._registry.Registry`,
``RULES``, keyed by target: an ``nn.Module`` subclass (looked up along the module's class hierarchy), a
function or ``torch.library`` op, or a method name string.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresskit._registry import Registry
from compresskit.graph.rules.context import RuleContext, RuleFn, TensorInfo, flatten_infos

__all__ = ["RULES", "register_rule", "passthrough_rule", "lookup_rule", "has_module_rule",
           "aten_ops", "functional", "torch_fns", "nn_modules"]

#: every channel rule, keyed by target (module class, function / op, or method name)
RULES: Registry[RuleFn] = Registry("channel rule")


def register_rule(
    target: Any,
    rule: RuleFn | None = None,
    *,
    passthrough: int | dict[int, int] | Iterable[tuple[int, int]] | None = None,
    reason: str | None = None,
    replace: bool = False,
) -> Any:
    """Declare how ``target`` moves channels.

    ``target``: an ``nn.Module`` subclass (made a tracing leaf), a function, a ``torch.library`` op, a
    custom ``torch.autograd.Function`` subclass (or its ``.apply``), or a method name; a list or tuple of
    them gives each the same rule. Give either ``rule`` (a function of a :class:`RuleContext` returning
    the output info), or ``passthrough`` (tensor argument index → output index; every other tensor
    argument and output is frozen with ``reason``), or neither to use it as a decorator:
    ``@register_rule(MyModule)``. A target that already has another rule raises
    :class:`~compresskit._registry.AlreadyRegisteredError` unless ``replace=True``.
    """
    if rule is not None and passthrough is not None:
        raise ValueError("register_rule: give either rule= or passthrough=, not both")
    if rule is None and passthrough is None:

        def decorator(fn: RuleFn) -> RuleFn:
            register_rule(target, fn, replace=replace)
            return fn

        return decorator
    if passthrough is not None:
        rule = passthrough_rule(passthrough, reason or "read by meaning (declared by register_rule)")
    if not callable(rule):
        raise TypeError(f"register_rule: rule must be callable, got {type(rule).__name__}")
    targets = [_function_class(t) for t in (target if isinstance(target, list | tuple) else [target])]
    for t in targets:
        if not (isinstance(t, str) and t) and not callable(t):
            raise TypeError(
                "register_rule: target must be an nn.Module subclass, a function, a torch.library op or a "
                f"method name, got {t!r}"
            )
    for t in targets:
        RULES.register(t, rule, replace=replace)
    return rule


def passthrough_rule(mapping: int | dict[int, int] | Iterable[tuple[int, int]], reason: str) -> RuleFn:
    """A rule where tensor argument ``i``'s channels become output ``o``'s (``mapping``: ``{i: o}``)."""
    if isinstance(mapping, int):
        pairs = [(mapping, 0)]
    elif isinstance(mapping, dict):
        pairs = list(mapping.items())
    else:
        pairs = [tuple(p) for p in mapping]
    for p in pairs:
        if len(p) != 2 or not all(isinstance(v, int) for v in p):
            raise ValueError(
                f"register_rule: passthrough must map int arg index -> int output index, got {p}"
            )

    def rule(ctx: RuleContext) -> Any:
        args = [ctx.builder.resolve(a) for a in ctx.node.args]
        outs = ctx.out if isinstance(ctx.out, tuple | list) else (ctx.out,)
        results: list[Any] = list(outs)
        fed: dict[int, TensorInfo] = {}
        used: set[int] = set()
        for i, o in pairs:
            if i >= len(args) or not isinstance(args[i], TensorInfo):
                raise ValueError(f"rule for {ctx.describe()}: argument {i} is not a tensor")
            if o >= len(outs) or not isinstance(outs[o], TensorInfo):
                raise ValueError(f"rule for {ctx.describe()}: output {o} is not a tensor")
            x = args[i]
            used.add(i)
            if not x.tracked:
                continue
            out_shape = outs[o].shape
            if len(out_shape) != x.ndim or out_shape[x.cdim] != x.shape[x.cdim]:
                ctx.freeze(x.ids, "declared pass-through but the output's channel dim has another size")
                continue
            if o in fed:
                ctx.union(fed[o].ids, x.ids)
            else:
                fed[o] = TensorInfo(tuple(out_shape), x.cdim, x.ids)
        for i, a in enumerate(args):
            for t in flatten_infos(a):
                if i not in used and t.tracked:
                    ctx.freeze(t.ids, reason)
        for k, v in ctx.node.kwargs.items():
            for t in flatten_infos(ctx.builder.resolve(v)):
                if t.tracked:
                    ctx.freeze(t.ids, f"{reason} (keyword {k})")
        for o, meta in enumerate(outs):
            if isinstance(meta, TensorInfo):
                results[o] = fed.get(o, TensorInfo(meta.shape))
        return results[0] if not isinstance(ctx.out, tuple | list) else type(ctx.out)(results)

    return rule


def _function_class(target: Any) -> Any:
    """``MyFunction.apply`` → ``MyFunction``: a custom autograd.Function is keyed by its class."""
    owner = getattr(target, "__self__", None)
    named_apply = getattr(target, "__name__", None) == "apply"
    if named_apply and isinstance(owner, type) and issubclass(owner, torch.autograd.Function):
        return owner
    return target


def _is_module_class(key: Any) -> bool:
    return isinstance(key, type) and issubclass(key, nn.Module)


def lookup_rule(kind: str, target: Any, module: nn.Module | None = None) -> RuleFn | None:
    """The rule for a node (``kind`` as in torch.fx), or ``None`` if there is none."""
    if kind == "call_module":
        for cls in type(module).__mro__:
            if _is_module_class(cls):
                rule = RULES.find(cls)
                if rule is not None:
                    return rule
        return None
    if kind == "call_method":
        if not isinstance(target, str):
            return None
        return RULES.find(target) or RULES.find(target.rstrip("_"))
    if kind == "call_function":
        if isinstance(target, str) or _is_module_class(target):
            return None  # method names and module classes are other kinds of keys
        function = getattr(target, "autograd_function", None)  # MyFunction.apply (graph/trace.py)
        if function is not None:
            return RULES.find(function) or getattr(target, "opaque_rule", None)
        rule = RULES.find(target)
        if rule is not None:
            return rule
        packet = getattr(target, "overloadpacket", None)
        if packet is not None and RULES.find(packet) is not None:
            return RULES.find(packet)
        default = getattr(target, "default", None) if type(target).__name__ == "OpOverloadPacket" else None
        if default is not None:  # rule given for op.default
            return RULES.find(default)
    return None


def has_module_rule(module: nn.Module) -> bool:
    """True when ``module``'s class or one of its bases has a rule (such modules are tracing leaves)."""
    return any(_is_module_class(cls) and RULES.find(cls) is not None for cls in type(module).__mro__)


# -- target lists for the built-in rules: names this torch version does not have are skipped ----------
def aten_ops(*names: str) -> list[Any]:
    """``torch.ops.aten.<name>`` packets that exist."""
    out = []
    for n in names:
        op = getattr(torch.ops.aten, n, None)
        if op is not None:
            out.append(op)
    return out


def functional(*names: str) -> list[Any]:
    """``torch.nn.functional.<name>`` functions that exist."""
    return [getattr(F, n) for n in names if hasattr(F, n)]


def torch_fns(*names: str) -> list[Any]:
    """``torch.<name>`` functions that exist (``torch.float`` and other non-callables are skipped)."""
    return [getattr(torch, n) for n in names if callable(getattr(torch, n, None))]


def nn_modules(*names: str) -> list[type]:
    """``torch.nn.<name>`` module classes that exist."""
    return [getattr(nn, n) for n in names if hasattr(nn, n)]
