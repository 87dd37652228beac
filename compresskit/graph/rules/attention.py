"""Ops that contract or sample: matmul (``@``, bmm, mm), scaled dot-product attention (whole heads only)
and ``grid_sample`` (the grid's channels are coordinates, read by meaning).
"""

from __future__ import annotations

import operator
from typing import Any

from compresskit.graph.rules.context import RuleContext, TensorInfo
from compresskit.graph.rules.table import aten_ops, functional, register_rule, torch_fns


def _matmul(ctx: RuleContext) -> Any:
    """``a @ b`` with ``a (..., M, K)``, ``b (..., K, N)``: batch dims align, K is contracted."""
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    if not isinstance(a, TensorInfo) or not isinstance(b, TensorInfo):
        return None
    out = ctx.out_shape
    if a.ndim < 2 or b.ndim < 2:
        for t in (a, b):
            if t.tracked:
                ctx.freeze(t.ids, "vector matmul contracts the channels")
        return ctx.untracked()
    n = len(out)
    res: TensorInfo | None = None

    def out_dim(t: TensorInfo, d: int) -> int:
        return d + n - t.ndim

    if a.tracked:
        if a.cdim == a.ndim - 1:
            ctx.freeze(a.ids, "matmul contracts these channels")
        elif a.cdim == a.ndim - 2:
            res = TensorInfo(out, n - 2, a.ids)
        else:
            od = out_dim(a, a.cdim)
            res = TensorInfo(out, od, a.ids)
            bd = od - (n - b.ndim)
            if bd >= 0:
                ctx.bind(b, bd, a.ids)
    if b.tracked:
        if b.cdim == b.ndim - 2:
            ctx.freeze(b.ids, "matmul contracts these channels")
        elif b.cdim == b.ndim - 1:
            if res is None:
                res = TensorInfo(out, n - 1, b.ids)
            else:
                ctx.freeze(b.ids, "matmul output would carry two channel spaces")
        elif res is None or res.cdim != out_dim(b, b.cdim):
            od = out_dim(b, b.cdim)
            if res is None:
                res = TensorInfo(out, od, b.ids)
                ad = od - (n - a.ndim)
                if ad >= 0:
                    ctx.bind(a, ad, b.ids)
            else:
                ctx.freeze(b.ids, "matmul output would carry two channel spaces")
    return res if res is not None else ctx.untracked()


register_rule(
    ["matmul", "bmm", "mm", "__matmul__", *torch_fns("matmul", "bmm", "mm"), *aten_ops("matmul", "bmm", "mm"),
     operator.matmul],
    _matmul,
)


def _sdpa(ctx: RuleContext) -> Any:
    """``softmax(q kᵀ / sqrt(d)) v`` over ``(..., heads, L, d)``: whole heads (a batch-like dim) only."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    mask = ctx.arg(3, "attn_mask")
    infos = [t for t in (q, k, v) if isinstance(t, TensorInfo)]
    base = None
    for t in infos:
        if not t.tracked:
            continue
        if t.cdim >= t.ndim - 2:
            ctx.freeze(t.ids, "attention reads these channels (head dim or sequence)")
        elif base is None:
            base = t
    if base is None:
        return ctx.untracked()
    d = base.cdim - base.ndim  # negative index, aligned from the right
    for t in [*infos, mask]:
        if isinstance(t, TensorInfo) and t is not base and t.ndim >= -d:
            ctx.bind(t, t.ndim + d, base.ids)
    out = ctx.out_shape
    return TensorInfo(out, len(out) + d, base.ids)


register_rule(functional("scaled_dot_product_attention") + aten_ops("scaled_dot_product_attention"), _sdpa)


def _grid_sample(ctx: RuleContext) -> Any:
    x, grid = ctx.arg(0, "input"), ctx.arg(1, "grid")
    if isinstance(grid, TensorInfo) and grid.tracked:
        ctx.freeze(grid.ids, "grid_sample reads the grid's coordinates by meaning")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    if x.tracked and x.cdim != 1:
        ctx.freeze(x.ids, "grid_sample samples over this dim")
        return ctx.untracked()
    return ctx.like(x)


register_rule(functional("grid_sample") + aten_ops("grid_sampler", "grid_sampler_2d", "grid_sampler_3d"),
              _grid_sample)

