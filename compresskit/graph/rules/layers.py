"""Layers with weights: convolutions (grouped and depthwise), linear, batch / instance / group / layer norm,
PReLU, embedding, and ``nn.MultiheadAttention`` (frozen). Module and functional forms share one core each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from compresskit.graph.rules.context import ParamRef, RuleContext, RuleFn, TensorInfo
from compresskit.graph.rules.table import aten_ops, functional, nn_modules, register_rule, torch_fns

__all__ = ["conv_core", "linear_core", "per_channel_core", "groupnorm_core", "layernorm_core"]


def _input_channels(ctx: RuleContext, x: Any, dim: int, what: str) -> np.ndarray | None:
    """``x``'s channel ids when they sit on ``dim``; otherwise freeze what is tracked and return None."""
    if not isinstance(x, TensorInfo):
        return None
    ids = x.ids_at(dim)
    if ids is None and x.tracked:
        ctx.freeze(x.ids, f"{what} reads channels on dim {dim % x.ndim}, but dim {x.cdim} is the tracked one")
    return ids


def _freeze_unread(ctx: RuleContext, module: str, tensor: str, dim: int, role: str, what: str) -> None:
    """A layer applied to a tensor whose channels are not tracked reads every position of ``tensor``'s
    ``dim``: freeze them, so another call of the same layer (shared weights) cannot drop them."""
    ctx.freeze(ctx.weight_ids(module, tensor, dim, role),
               f"{what} is applied to a tensor whose channels are not tracked (it reads all of them)")


def _same_owner(ctx: RuleContext, w: ParamRef, b: ParamRef) -> bool:
    """Weight and bias of one layer: the same module, or a weight tied to the bias module's own weight
    (torch.export names a tied weight after one of its holders)."""
    if b.module == w.module:
        return True
    canonical = ctx.builder.canonical
    return canonical(b.module, w.tensor) == canonical(w.module, w.tensor)


def _owner_is(ctx: RuleContext, ref: ParamRef, cls: type | tuple[type, ...], tensor: str = "weight") -> bool:
    mod = ctx.builder.get_module(ref.module)
    return isinstance(mod, cls) and ref.tensor == tensor


def conv_core(
    ctx: RuleContext,
    x: Any,
    module: str,
    weight: str,
    bias: str | None,
    groups: int,
    transposed: bool,
    adjustable_groups: bool,
    bias_module: str | None = None,
) -> TensorInfo:
    """Channels through ConvNd / ConvTransposeNd (weight ``(out, in/g, *k)`` / ``(in, out/g, *k)``).

    groups == 1: output channels are new (weight rows, role ``out``), input channels are consumed
    (weight columns, role ``in``). Depthwise (one input channel per conv group): output channel
    ``c*m + j`` comes from input ``c`` alone, so outputs share their input's unit and ``groups`` shrinks
    with the channels. Other grouped convs keep ``groups``: channel ``j`` of every conv group is one
    unit, so every conv group keeps the same number of channels.
    """
    wshape = ctx.builder.param_shape(module, weight)
    if transposed:
        cin, cout = wshape[0], wshape[1] * groups
    else:
        cout, cin = wshape[0], wshape[1] * groups
    in_ids = _input_channels(ctx, x, 1, "convolution")
    if in_ids is not None and len(in_ids) != cin:
        ctx.freeze(in_ids, "input channel count differs from the weight's")
        in_ids = None
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    if groups == 1:
        out_ids = ctx.weight_ids(module, weight, out_dim, "out")
        if in_ids is not None:
            ctx.member(module, weight, in_dim, in_ids, "in")
        else:
            _freeze_unread(ctx, module, weight, in_dim, "in", "convolution")
    elif cin == groups:  # depthwise (channel multiplier m)
        m = cout // groups
        if in_ids is None:
            in_ids = ctx.fresh(cin)
            ctx.freeze(in_ids, "depthwise conv on an untracked input")
        if not adjustable_groups:
            ctx.freeze(in_ids, "functional depthwise conv: its groups argument cannot follow the channels")
        out_ids = np.repeat(in_ids, m)
        if transposed:
            ctx.member(module, weight, 0, in_ids, "param")
        else:
            ctx.member(module, weight, 0, out_ids, "param")
    else:  # grouped: balanced per conv group
        per_in, per_out = cin // groups, cout // groups
        if in_ids is not None:
            blocks = in_ids.reshape(groups, per_in)
            for g in range(1, groups):
                ctx.union(blocks[0], blocks[g])
            if transposed:
                ctx.member(module, weight, 0, in_ids, "in")
            else:
                ctx.member(module, weight, 1, blocks[0], "in")
        else:
            _freeze_unread(ctx, module, weight, 0 if transposed else 1, "in", "grouped convolution")
        if transposed:
            out_ids = np.tile(ctx.weight_ids(module, weight, 1, "out"), groups)
        else:
            out_ids = ctx.weight_ids(module, weight, 0, "out")
            blocks = out_ids.reshape(groups, per_out)
            for g in range(1, groups):
                ctx.union(blocks[0], blocks[g])
    if bias is not None:
        ctx.member(module if bias_module is None else bias_module, bias, 0, out_ids, "param")
    return ctx.tracked(1, out_ids)


def _conv_module(ctx: RuleContext) -> Any:
    m = ctx.module
    x = ctx.arg(0, "input")
    return conv_core(
        ctx,
        x,
        ctx.module_name,
        "weight",
        "bias" if m.bias is not None else None,
        m.groups,
        isinstance(m, nn.modules.conv._ConvTransposeNd),
        True,
    )


register_rule(
    nn_modules("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    _conv_module,
)


def _param_ref(ctx: RuleContext, x: Any) -> ParamRef | None:
    if isinstance(x, TensorInfo) and x.param is not None and x.param.dims == tuple(range(x.ndim)):
        return x.param
    return None


def _functional_conv(transposed: bool) -> RuleFn:
    def rule(ctx: RuleContext) -> Any:
        x = ctx.arg(0, "input")
        w = _param_ref(ctx, ctx.arg(1, "weight"))
        b = _param_ref(ctx, ctx.arg(2, "bias"))
        if w is None:
            return None  # weight computed in the forward: unknown
        groups = ctx.arg(6, "groups", 1)  # F.conv*d and F.conv_transpose*d both take groups 7th
        if not isinstance(groups, int):
            return None
        adjustable = _owner_is(ctx, w, nn.modules.conv._ConvNd)
        if b is not None and not _same_owner(ctx, w, b):
            return None
        return conv_core(ctx, x, w.module, w.tensor, b.tensor if b else None, groups, transposed, adjustable,
                         b.module if b else None)

    return rule


register_rule(functional("conv1d", "conv2d", "conv3d") + aten_ops("conv1d", "conv2d", "conv3d"),
              _functional_conv(False))
register_rule(
    functional("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
    + aten_ops("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    _functional_conv(True),
)


def linear_core(ctx: RuleContext, x: Any, module: str, weight: str, bias: str | None,
                bias_module: str | None = None) -> TensorInfo:
    """``y = x W^T + b`` over the last dim: rows of W are new channels, columns consume ``x``'s."""
    in_ids = None
    if isinstance(x, TensorInfo):
        in_ids = _input_channels(ctx, x, x.ndim - 1, "linear layer")
    out_ids = ctx.weight_ids(module, weight, 0, "out")
    if in_ids is not None:
        ctx.member(module, weight, 1, in_ids, "in")
    else:
        _freeze_unread(ctx, module, weight, 1, "in", "linear layer")
    if bias is not None:
        ctx.member(module if bias_module is None else bias_module, bias, 0, out_ids, "param")
    return ctx.tracked(-1, out_ids)


def _linear_module(ctx: RuleContext) -> Any:
    m = ctx.module
    return linear_core(
        ctx, ctx.arg(0, "input"), ctx.module_name, "weight", "bias" if m.bias is not None else None
    )


register_rule(nn_modules("Linear"), _linear_module)


def _functional_linear(ctx: RuleContext) -> Any:
    w = _param_ref(ctx, ctx.arg(1, "weight"))
    b = _param_ref(ctx, ctx.arg(2, "bias"))
    if w is None or (b is not None and not _same_owner(ctx, w, b)):
        return None
    return linear_core(ctx, ctx.arg(0, "input"), w.module, w.tensor, b.tensor if b else None,
                       b.module if b else None)


register_rule(functional("linear") + aten_ops("linear"), _functional_linear)


def per_channel_core(
    ctx: RuleContext, x: Any, module: str, tensors: Sequence[str | None], what: str
) -> TensorInfo:
    """A per-channel op on dim 1 (batch/instance norm): its tensors travel with the channels."""
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    ids = x.ids_at(1)
    if ids is None:
        if x.tracked:
            ctx.freeze(x.ids, f"{what} computes statistics over dim {x.cdim}")
        for t in tensors:
            if t is not None:
                _freeze_unread(ctx, module, t, 0, "param", what)
        return ctx.untracked()
    for t in tensors:
        if t is not None:
            ctx.member(module, t, 0, ids, "param")
    return ctx.like(x)


def _batchnorm_module(ctx: RuleContext) -> Any:
    m = ctx.module
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(m, n, None) is not None]
    return per_channel_core(ctx, ctx.arg(0, "input"), ctx.module_name, names, type(m).__name__)


register_rule(nn_modules("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"), _batchnorm_module)


def _functional_batchnorm(order: Sequence[str], x_index: int = 0) -> RuleFn:
    """``order`` names positional tensor args after the input, e.g. running_mean, running_var, weight."""

    def rule(ctx: RuleContext) -> Any:
        x = ctx.arg(x_index, "input")
        refs = []
        for k, name in enumerate(order, start=1):
            v = ctx.arg(k, name)
            if v is None:
                continue
            r = _param_ref(ctx, v)
            if r is None:
                return None
            refs.append(r)
        mods = {r.module for r in refs}
        if len(mods) > 1:
            return None
        out = per_channel_core(ctx, x, refs[0].module if refs else "", [r.tensor for r in refs], "batch norm")
        if isinstance(ctx.out, tuple | list):
            return type(ctx.out)([out, *[ctx.untracked(o.shape) for o in ctx.out[1:]]])
        return out

    return rule


register_rule(functional("batch_norm"),
              _functional_batchnorm(["running_mean", "running_var", "weight", "bias"]))
register_rule(
    aten_ops("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"),
    _functional_batchnorm(["weight", "bias", "running_mean", "running_var"]),
)


def groupnorm_core(ctx: RuleContext, x: Any, module: str, num_groups: int, tensors: Sequence[str]) -> Any:
    """GroupNorm normalises each group of C/G channels together: a whole group is one unit."""
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    ids = x.ids_at(1)
    if ids is None:
        if x.tracked and x.cdim != 0:
            ctx.freeze(x.ids, "GroupNorm computes statistics over this dim")
        return ctx.like(x) if x.cdim == 0 else ctx.untracked()
    blocks = ids.reshape(num_groups, -1)
    for j in range(1, blocks.shape[1]):
        ctx.union(blocks[:, 0], blocks[:, j])
    for t in tensors:
        ctx.member(module, t, 0, ids, "param")
    return ctx.like(x)


def _groupnorm_module(ctx: RuleContext) -> Any:
    m = ctx.module
    tensors = ["weight", "bias"] if m.affine else []
    return groupnorm_core(ctx, ctx.arg(0, "input"), ctx.module_name, m.num_groups, tensors)


register_rule(nn_modules("GroupNorm"), _groupnorm_module)


def _functional_groupnorm(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    g = ctx.arg(1, "num_groups")
    w, b = _param_ref(ctx, ctx.arg(2, "weight")), _param_ref(ctx, ctx.arg(3, "bias"))
    if w is None or not isinstance(g, int) or not _owner_is(ctx, w, nn.GroupNorm):
        if isinstance(x, TensorInfo) and x.tracked:
            ctx.freeze(x.ids, "functional group_norm: its num_groups cannot follow the channels")
        return ctx.untracked()
    return groupnorm_core(ctx, x, w.module, g, [w.tensor] + ([b.tensor] if b else []))


register_rule(functional("group_norm") + aten_ops("group_norm"), _functional_groupnorm)


def layernorm_core(ctx: RuleContext, x: Any, n_norm: int) -> Any:
    """LayerNorm normalises over the last ``n_norm`` dims: channels there cannot be dropped exactly."""
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    if x.tracked and x.cdim >= x.ndim - n_norm:
        ctx.freeze(
            x.ids, "LayerNorm normalises over these channels (dropping one changes the mean and variance)"
        )
    return ctx.like(x)


def _layernorm_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    n = len(ctx.module.normalized_shape)
    out = layernorm_core(ctx, x, n)
    if isinstance(x, TensorInfo) and x.tracked and ctx.module.elementwise_affine and x.cdim >= x.ndim - n:
        pdim = x.cdim - (x.ndim - n)  # the (frozen) channels index the affine parameters here
        for t in ("weight", "bias"):
            if getattr(ctx.module, t, None) is not None:
                ctx.member(ctx.module_name, t, pdim, x.ids, "param")
    return out


register_rule(nn_modules("LayerNorm"), _layernorm_module)


def _functional_layernorm(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    shape = ctx.arg(1, "normalized_shape")
    n = len(shape) if isinstance(shape, list | tuple | torch.Size) else 1
    return layernorm_core(ctx, x, n)


register_rule(functional("layer_norm") + aten_ops("layer_norm"), _functional_layernorm)


def _instancenorm_module(ctx: RuleContext) -> Any:
    m = ctx.module
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(m, n, None) is not None]
    return per_channel_core(ctx, ctx.arg(0, "input"), ctx.module_name, names, "InstanceNorm")


register_rule(nn_modules("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"), _instancenorm_module)
# F.instance_norm(input, running_mean, running_var, weight, bias, ...): per (sample, channel) statistics, so
# channels are independent; aten's instance_norm takes weight and bias first
register_rule(functional("instance_norm"),
              _functional_batchnorm(["running_mean", "running_var", "weight", "bias"]))
register_rule(torch_fns("instance_norm") + aten_ops("instance_norm"),
              _functional_batchnorm(["weight", "bias", "running_mean", "running_var"]))


def _prelu_core(ctx: RuleContext, x: Any, module: str, tensor: str, n: int) -> Any:
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    if n == 1:
        return ctx.like(x)
    return per_channel_core(ctx, x, module, [tensor], "PReLU")


def _prelu_module(ctx: RuleContext) -> Any:
    return _prelu_core(ctx, ctx.arg(0, "input"), ctx.module_name, "weight", ctx.module.num_parameters)


register_rule(nn_modules("PReLU"), _prelu_module)


def _functional_prelu(ctx: RuleContext) -> Any:
    w = _param_ref(ctx, ctx.arg(1, "weight"))
    if w is None:
        return None
    return _prelu_core(ctx, ctx.arg(0, "input"), w.module, w.tensor, math.prod(ctx.param_shape(w)))


register_rule(functional("prelu") + torch_fns("prelu") + aten_ops("prelu", "_prelu_kernel"),
              _functional_prelu)


def _embedding_module(ctx: RuleContext) -> Any:
    ids = ctx.weight_ids(ctx.module_name, "weight", 1, "out")
    return ctx.tracked(-1, ids)


register_rule(nn_modules("Embedding"), _embedding_module)


def _mha_module(ctx: RuleContext) -> Any:
    ctx.freeze_all_inputs(
        "nn.MultiheadAttention needs query dim == embed_dim == heads x head_dim and scales by head_dim"
    )
    outs = ctx.out if isinstance(ctx.out, tuple | list) else (ctx.out,)
    res = []
    for o in outs:
        if isinstance(o, TensorInfo):
            ids = ctx.fresh(o.shape[-1])
            ctx.freeze(ids, "output of nn.MultiheadAttention")
            res.append(ctx.tracked(-1, ids, o.shape))
        else:
            res.append(o)
    return tuple(res) if isinstance(ctx.out, tuple | list) else res[0]


register_rule(nn_modules("MultiheadAttention"), _mha_module)

