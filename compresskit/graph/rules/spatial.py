"""Spatial ops: pooling, interpolation / upsampling, pixel (un)shuffle and channel shuffle. Channels on
a non-spatial dim pass through; (un)shuffles map channel indices by rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from compresskit.graph.rules.context import RuleContext, RuleFn, TensorInfo
from compresskit.graph.rules.table import aten_ops, functional, nn_modules, register_rule, torch_fns

__all__ = ["spatial_dims"]


def spatial_dims(module: nn.Module) -> int:
    name = type(module).__name__
    for k in (1, 2, 3):
        if f"{k}d" in name or f"{k}D" in name:
            return k
    return 2


def _spatial_rule(n_spatial: int | None = None, what: str = "pooling") -> RuleFn:
    """Ops on the last ``n`` (spatial) dims: pooling, interpolation. Channels elsewhere pass through."""

    def rule(ctx: RuleContext) -> Any:
        x = ctx.arg(0, "input")
        if not isinstance(x, TensorInfo):
            return None
        n = n_spatial
        if n is None:
            n = spatial_dims(ctx.module) if ctx.module is not None else max(1, x.ndim - 2)
        outs = ctx.out if isinstance(ctx.out, tuple | list) else (ctx.out,)
        if x.tracked and x.cdim >= x.ndim - n:
            ctx.freeze(x.ids, f"{what} over the channel dim")
            res = [TensorInfo(o.shape) for o in outs]
        else:
            res = [ctx.like(x, o.shape) for o in outs]
        return type(ctx.out)(res) if isinstance(ctx.out, tuple | list) else res[0]

    return rule


for _k in (1, 2, 3):
    _pools = [f"max_pool{_k}d", f"avg_pool{_k}d", f"adaptive_avg_pool{_k}d", f"adaptive_max_pool{_k}d",
              f"lp_pool{_k}d", f"fractional_max_pool{_k}d", f"max_pool{_k}d_with_indices",
              f"_adaptive_avg_pool{_k}d", f"upsample_nearest{_k}d", f"upsample_bilinear{_k}d"]
    register_rule(functional(*_pools) + torch_fns(*_pools) + aten_ops(*_pools), _spatial_rule(_k))
    _modules = [f"MaxPool{_k}d", f"AvgPool{_k}d", f"AdaptiveAvgPool{_k}d", f"AdaptiveMaxPool{_k}d",
                f"LPPool{_k}d"]
    register_rule(nn_modules(*_modules), _spatial_rule(_k))
register_rule(aten_ops("upsample_bicubic2d", "upsample_trilinear3d", "upsample_linear1d"),
              _spatial_rule(None, "interp"))


def _interp(ctx: RuleContext) -> Any:
    return (
        _spatial_rule(None, "interpolation")(ctx)
        if ctx.module is None
        else _spatial_rule(None, "upsampling")(ctx)
    )


register_rule(functional("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"), _interp)


def _upsample_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    n = max(1, x.ndim - 2) if isinstance(x, TensorInfo) else 2
    return _spatial_rule(n, "upsampling")(ctx)


register_rule(nn_modules("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"), _upsample_module)


def _pixel_shuffle_core(ctx: RuleContext, x: Any, r: int, shuffle: bool) -> Any:
    """pixel_shuffle: channel ``c`` of the output is input channels ``c*r²..c*r²+r²-1`` (one unit)."""
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    cdim = x.ndim - 3
    if x.tracked and x.cdim != cdim:
        ctx.freeze(x.ids, "pixel (un)shuffle moves this dim")
        return ctx.untracked()
    if not x.tracked:
        return ctx.untracked()
    if shuffle:
        grid = x.ids.reshape(-1, r * r)
        for j in range(1, r * r):
            ctx.union(grid[:, 0], grid[:, j])
        return ctx.tracked(cdim, grid[:, 0].copy())
    return ctx.tracked(cdim, np.repeat(x.ids, r * r))


def _pixel_shuffle(ctx: RuleContext) -> Any:
    r = ctx.module.upscale_factor if ctx.module is not None else ctx.arg(1, "upscale_factor")
    return _pixel_shuffle_core(ctx, ctx.arg(0, "input"), r, True)


register_rule(
    functional("pixel_shuffle") + torch_fns("pixel_shuffle") + aten_ops("pixel_shuffle")
    + nn_modules("PixelShuffle"),
    _pixel_shuffle,
)


def _pixel_unshuffle(ctx: RuleContext) -> Any:
    r = ctx.module.downscale_factor if ctx.module is not None else ctx.arg(1, "downscale_factor")
    return _pixel_shuffle_core(ctx, ctx.arg(0, "input"), r, False)


register_rule(
    functional("pixel_unshuffle") + torch_fns("pixel_unshuffle") + aten_ops("pixel_unshuffle")
    + nn_modules("PixelUnshuffle"),
    _pixel_unshuffle,
)


def _channel_shuffle(ctx: RuleContext) -> Any:
    """Output channel ``j*g + i`` is input channel ``i*(C/g) + j``; position ``j`` of each group is a unit."""
    x = ctx.arg(0, "input")
    g = ctx.module.groups if ctx.module is not None else ctx.arg(1, "groups")
    if not isinstance(x, TensorInfo) or not x.tracked:
        return ctx.untracked()
    if x.cdim != 1:
        ctx.freeze(x.ids, "channel shuffle acts on dim 1")
        return ctx.untracked()
    grid = x.ids.reshape(g, -1)
    for i in range(1, g):
        ctx.union(grid[0], grid[i])
    return ctx.tracked(1, grid.T.reshape(-1).copy())


register_rule(
    functional("channel_shuffle") + torch_fns("channel_shuffle", "native_channel_shuffle")
    + aten_ops("channel_shuffle", "native_channel_shuffle") + nn_modules("ChannelShuffle"),
    _channel_shuffle,
)

