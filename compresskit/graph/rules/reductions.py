"""Reductions and normalisations over a dim: mean / sum / max ..., var / std, softmax, ``F.normalize``,
norms. Over the channel dim they freeze the channels; elsewhere the channels pass through.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compresskit.graph.rules.context import RuleContext, TensorInfo
from compresskit.graph.rules.elementwise import elementwise
from compresskit.graph.rules.table import aten_ops, functional, nn_modules, register_rule, torch_fns


def _reduce_dims(ctx: RuleContext, x: TensorInfo, dims: Any, keepdim: bool) -> Any:
    if dims is None or (isinstance(dims, list | tuple) and len(dims) == 0):
        dims = list(range(x.ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = sorted({d % max(1, x.ndim) for d in dims})
    if x.tracked and x.cdim in dims:
        ctx.freeze(x.ids, "reduction over the channels")
        return None
    if not x.tracked:
        return "untracked"
    c = x.cdim if keepdim else x.cdim - sum(1 for d in dims if d < x.cdim)
    return c


def _reduction(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(1, "dim")
    if isinstance(dim, TensorInfo):  # torch.max(a, b): element-wise
        return elementwise(ctx)
    keepdim = bool(ctx.arg(2, "keepdim", False))
    c = _reduce_dims(ctx, x, dim, keepdim)
    outs = ctx.out if isinstance(ctx.out, tuple | list) else (ctx.out,)
    res = []
    for o in outs:
        if isinstance(c, int) and isinstance(o, TensorInfo) and o.ndim > c and o.shape[c] == len(x.ids):
            res.append(TensorInfo(o.shape, c, x.ids))
        else:
            res.append(TensorInfo(o.shape) if isinstance(o, TensorInfo) else o)
    return type(ctx.out)(res) if isinstance(ctx.out, tuple | list) else res[0]


_REDUCTIONS = ["mean", "sum", "amax", "amin", "max", "min", "logsumexp", "prod", "argmax", "argmin", "all",
               "any", "nansum", "nanmean", "median", "count_nonzero"]
register_rule(_REDUCTIONS + torch_fns(*_REDUCTIONS) + aten_ops(*_REDUCTIONS), _reduction)


def _var_std(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    dim = ctx.arg(1, "dim")
    if isinstance(dim, bool):  # var(x, unbiased)
        dim = None
    keepdim = (
        bool(ctx.arg(3, "keepdim", False))
        if ctx.has_arg(3, "keepdim")
        else bool(ctx.arg(2, "keepdim", False))
    )
    if not isinstance(x, TensorInfo):
        return None
    c = _reduce_dims(ctx, x, dim, keepdim)
    if isinstance(c, int):
        return TensorInfo(ctx.out_shape, c, x.ids)
    return ctx.untracked()


register_rule(["var", "std", *torch_fns("var", "std"), *aten_ops("var", "std")], _var_std)


def _softmax(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim")
    if dim is None:
        dim = 1 if isinstance(ctx.module, nn.Softmax2d) else None
    if dim is None or (x.tracked and dim % x.ndim == x.cdim):
        if x.tracked:
            ctx.freeze(x.ids, "softmax over the channels (every channel changes the others)")
        return ctx.untracked()
    return ctx.like(x)


register_rule(
    ["softmax", "log_softmax", *functional("softmax", "log_softmax", "softmin"),
     *torch_fns("softmax", "log_softmax"), *aten_ops("softmax", "_softmax", "log_softmax", "_log_softmax"),
     *nn_modules("Softmax", "LogSoftmax", "Softmin")],
    _softmax,
)


def _softmax2d_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if isinstance(x, TensorInfo) and x.tracked and x.cdim == x.ndim - 3:
        ctx.freeze(x.ids, "Softmax2d over the channels")
        return ctx.untracked()
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


register_rule(nn_modules("Softmax2d"), _softmax2d_module)


def _normalize(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    dim = ctx.arg(2, "dim", 1)
    if isinstance(x, TensorInfo) and x.tracked and dim % x.ndim == x.cdim:
        ctx.freeze(x.ids, "normalisation over the channels")
        return ctx.untracked()
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


register_rule(functional("normalize"), _normalize)


def _norm(ctx: RuleContext) -> Any:
    """``torch.norm(x, p, dim, keepdim)`` / ``linalg.vector_norm(x, ord, dim, keepdim)``."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    c = _reduce_dims(ctx, x, ctx.arg(2, "dim"), bool(ctx.arg(3, "keepdim", False)))
    if isinstance(c, int):
        return TensorInfo(ctx.out_shape, c, x.ids)
    return ctx.untracked()


register_rule(["norm", *torch_fns("norm"), torch.linalg.vector_norm, *aten_ops("linalg_vector_norm")], _norm)

