"""Element-wise ops: activations, arithmetic, comparisons, ``where``, ``masked_fill``. Broadcasting operands
aligned on the output's channel dim are joined (``a + b`` keeps ``a``'s and ``b``'s channels together).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from compresskit.graph.rules.context import BROADCAST, RuleContext, TensorInfo
from compresskit.graph.rules.table import aten_ops, functional, nn_modules, register_rule, torch_fns

__all__ = ["elementwise"]


def _words(text: str) -> list[str]:
    return text.split()


_UNARY_NAMES = _words(
    """
    relu relu6 leaky_relu elu selu celu gelu silu mish sigmoid tanh hardswish hardsigmoid hardtanh
    softplus softsign tanhshrink logsigmoid threshold abs neg exp exp2 log log2 log10 log1p expm1
    sqrt rsqrt reciprocal sin cos square sign floor ceil round trunc clamp clip clamp_min clamp_max
    erf nan_to_num frac positive sgn dropout alpha_dropout feature_alpha_dropout dropout1d dropout2d
    dropout3d contiguous clone detach float double half bfloat16 to type cpu cuda requires_grad_
    zeros_like ones_like empty_like full_like rand_like randn_like type_as lift_fresh_copy alias
    _to_copy hardswish_ relu_ sigmoid_ tanh_ silu_ gelu_ dropout_ hardtanh_ leaky_relu_ elu_ clamp_
    fill_ zero_ mul_scalar softshrink hardshrink rrelu native_dropout
    """
)
_UNARY_MODULES = nn_modules(
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "ELU",
    "SELU",
    "CELU",
    "GELU",
    "SiLU",
    "Mish",
    "Sigmoid",
    "Tanh",
    "Hardswish",
    "Hardsigmoid",
    "Hardtanh",
    "Softplus",
    "Softsign",
    "Tanhshrink",
    "LogSigmoid",
    "Threshold",
    "Identity",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "Softshrink",
    "Hardshrink",
    "RReLU",
)
_BINARY_NAMES = _words(
    """
    add sub mul div true_divide floor_divide remainder fmod pow maximum minimum fmax fmin atan2
    hypot rsub eq ne lt le gt ge logical_and logical_or logical_xor bitwise_and bitwise_or addcmul
    addcdiv lerp copysign xlogy
    """
)
_OPERATORS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.and_,
    operator.or_,
    operator.xor,
]


def _unary(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        x = ctx.arg(0, "self")
    if not isinstance(ctx.out, TensorInfo):
        return None
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    return ctx.like(x)


register_rule([*_UNARY_NAMES, *(n + "_" for n in _UNARY_NAMES)], _unary)
register_rule(torch_fns(*_UNARY_NAMES) + functional(*_UNARY_NAMES) + aten_ops(*_UNARY_NAMES), _unary)
register_rule([operator.neg, operator.pos, operator.invert], _unary)


def _unary_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


register_rule(_UNARY_MODULES, _unary_module)


def elementwise(ctx: RuleContext, operands: Sequence[Any] | None = None) -> TensorInfo:
    """Broadcasting element-wise op: tracked operands aligned on the same output dim are joined."""
    if operands is None:
        operands = [ctx.builder.resolve(a) for a in ctx.node.args]
        operands += [ctx.builder.resolve(v) for k, v in ctx.node.kwargs.items() if k in ("other", "input")]
    tensors = [t for t in operands if isinstance(t, TensorInfo)]
    shape = ctx.out_shape
    n = len(shape)
    chosen: tuple[int, np.ndarray] | None = None
    for t in tensors:
        if t.tracked:
            d = t.cdim + n - t.ndim
            if shape[d] != len(t.ids):  # a single channel broadcast over many
                ctx.freeze(t.ids, BROADCAST.format(n=shape[d]))
                continue
            if chosen is None:
                chosen = (d, t.ids)
            elif chosen[0] != d:
                ctx.freeze(t.ids, f"channels on dim {d} meet channels on dim {chosen[0]}")
    if chosen is None:
        params = [t for t in tensors if t.param is not None]
        if len(params) == 1 and all(t.param is not None or math.prod(t.shape) <= 1 for t in tensors):
            p = params[0]
            if p.ndim == n:
                return TensorInfo(tuple(shape), param=p.param)
        return ctx.untracked()
    d, ids = chosen
    for t in tensors:
        td = d - (n - t.ndim)
        if td < 0:
            continue
        if t.cdim == td and t.ids is ids:
            continue
        ctx.bind(t, td, ids)
    return ctx.tracked(d, ids)


def _ewise(ctx: RuleContext) -> Any:
    if not isinstance(ctx.out, TensorInfo):
        return None
    return elementwise(ctx)


register_rule([*_BINARY_NAMES, *(n + "_" for n in _BINARY_NAMES), "__radd__", "__rmul__"], _ewise)
register_rule(torch_fns(*_BINARY_NAMES) + aten_ops(*_BINARY_NAMES) + _OPERATORS, _ewise)


def _where(ctx: RuleContext) -> Any:
    return elementwise(ctx, [ctx.arg(0, "condition"), ctx.arg(1, "input"), ctx.arg(2, "other")])


register_rule([*torch_fns("where"), *aten_ops("where"), "where"], _where)


def _masked_fill(ctx: RuleContext) -> Any:
    return elementwise(ctx, [ctx.arg(0, "input"), ctx.arg(1, "mask")])


register_rule(["masked_fill", "masked_fill_", *torch_fns("masked_fill"), *aten_ops("masked_fill")],
              _masked_fill)


def _copy(ctx: RuleContext) -> Any:
    """``dst.copy_(src)``: ``dst`` takes ``src``'s values (broadcast), channel by channel."""
    if not isinstance(ctx.out, TensorInfo):
        return None
    return elementwise(ctx, [ctx.arg(0, "self"), ctx.arg(1, "src")])


register_rule(["copy_", *aten_ops("copy_", "copy")], _copy)
