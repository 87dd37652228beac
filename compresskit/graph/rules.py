"""How each op moves channels, and :func:`register_rule` for custom ops and modules.

Every tensor in a traced graph is described to the rules by a :class:`TensorInfo`: its ``shape``, the
dimension ``cdim`` that carries a tracked channel space (or ``None``) and ``ids``, one channel element id
per position along ``cdim``. A rule looks at its inputs' infos and

* returns the output's info (the same structure as the op's output: a ``TensorInfo`` per tensor, tuples
  for tuples),
* joins channel spaces that must stay aligned (``ctx.union``: ``a + b`` joins ``a``'s and ``b``'s),
* records which module tensors are indexed by which elements (``ctx.member`` / ``ctx.weight_ids``),
* freezes channels it reads *by meaning* (``ctx.freeze``: a softmax over channels, the 2 channels of a
  flow field, the F² taps of an adaptive-kernel op).

**Unknown means frozen**: an op with no rule freezes every channel space it touches and its outputs are
untracked, so nothing around it is ever shrunk.

Writing a rule for a custom op (the declarative form covers most plugins)::

    import compresskit as ck

    # output 0 carries input 0's channels (per-channel sampling); all other tensor inputs (weights,
    # offsets, flows) are read by meaning and therefore frozen, and so is any other output
    ck.register_rule(torch.ops.mylib.adacof, passthrough={0: 0}, reason="kernel taps are read by meaning")

    # a function that cannot be traced into: make it a leaf first, then describe it
    ck.register_leaf(my_warp)
    ck.register_rule(my_warp, passthrough={0: 0})

    # full control: a function of a RuleContext
    @ck.register_rule(MyAttention)
    def _my_attention(ctx):
        x = ctx.arg(0)                      # TensorInfo of the first argument
        ctx.freeze(x.ids, "MyAttention mixes channels")
        return ctx.untracked()

``passthrough`` maps *tensor argument index → output index* (use an int for ``{i: 0}``, a list of pairs,
or a dict); several inputs passing to the same output are joined (an element-wise custom op). Output
channel dims must have the input's size. Tensor arguments not listed are frozen with ``reason``.
Targets: an ``nn.Module`` subclass (it also becomes a tracing leaf), a function (register it with
``register_leaf`` too when fx must not trace into it), a ``torch.library`` op (``OpOverloadPacket`` or
``OpOverload``), a custom ``torch.autograd.Function`` subclass (or its ``.apply``; tracing never enters
it), or a method name string such as ``"view"``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.build import GraphBuilder

RuleFn = Callable[["RuleContext"], Any]

_MISSING = object()


# --------------------------------------------------------------------------------------------------
# What rules see
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamRef:
    """A parameter or buffer used directly in the forward (``self.cls_token``, ``self.gamma * x``).

    ``dims[d]`` is the parameter dimension that tensor dimension ``d`` views (``None`` for a dimension
    added by ``unsqueeze``/``None``-indexing); ``module``/``tensor`` name it.
    """

    module: str
    tensor: str
    dims: tuple[int | None, ...]

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.tensor}" if self.module else self.tensor


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as rules see it: ``shape``, tracked channel dim ``cdim`` with element ``ids``, or a
    parameter reference ``param`` for parameters used directly."""

    shape: tuple[int, ...]
    cdim: int | None = None
    ids: np.ndarray | None = None
    param: ParamRef | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def tracked(self) -> bool:
        return self.cdim is not None

    def ids_at(self, dim: int) -> np.ndarray | None:
        """The element ids if ``dim`` is the tracked channel dim, else ``None``."""
        if self.cdim is None:
            return None
        return self.ids if dim % max(1, self.ndim) == self.cdim else None

    def __repr__(self) -> str:
        extra = f", param={self.param.qualname}" if self.param else ""
        return f"TensorInfo(shape={self.shape}, cdim={self.cdim}{extra})"


def _flatten_infos(x: Any) -> list[TensorInfo]:
    if isinstance(x, TensorInfo):
        return [x]
    if isinstance(x, list | tuple):
        return [t for item in x for t in _flatten_infos(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in _flatten_infos(item)]
    if isinstance(x, slice):
        return _flatten_infos([x.start, x.stop, x.step])
    return []


class RuleContext:
    """What a rule gets: the node's arguments as :class:`TensorInfo` / values, and the graph's records.

    * ``ctx.arg(i, name, default)`` – argument ``i`` (or keyword ``name``), tensors as ``TensorInfo``.
    * ``ctx.is_literal(i, name)`` – the argument was written in the source (not computed from a shape).
    * ``ctx.out`` – the output's metadata (``TensorInfo`` without ids, or a tuple of them);
      ``ctx.out_shape`` for a single tensor.
    * ``ctx.fresh(n)`` – ``n`` new channel elements; ``ctx.union(a, b)`` joins two id arrays position-wise.
    * ``ctx.freeze(ids_or_info, reason)`` – these channels can never be dropped.
    * ``ctx.weight_ids(module, tensor, dim, role)`` – the ids of a module tensor's dimension (fresh the
      first time, the same ids when the module is called again); ``ctx.member(module, tensor, dim, ids,
      role)`` ties a module tensor's dimension to existing ids (roles: ``"out"``, ``"in"``, ``"param"``).
    * ``ctx.bind(info, dim, ids)`` – an operand that must be aligned with ``ids`` along ``dim``
      (joined if tracked there, a member if it is a parameter, frozen if it is an untracked tensor).
    * ``ctx.tracked(cdim, ids)``, ``ctx.untracked()``, ``ctx.like(info)`` – build the output info.
    * ``ctx.require_count(lhs, expr, reason)`` – a size computed in the forward (``size_expr``) must count
      the channels ``lhs`` after shrinking; checked once the graph is complete, else frozen with ``reason``.
    """

    def __init__(self, builder: GraphBuilder, node: Any, module: nn.Module | None, module_name: str):
        self.builder = builder
        self.node = node
        self.module = module
        self.module_name = module_name
        self.out = builder.meta[node]

    # -- arguments -----------------------------------------------------------------------------------
    def _raw(self, i: int, name: str | None) -> Any:
        args, kwargs = self.node.args, self.node.kwargs
        if i is not None and 0 <= i < len(args):
            return args[i]
        if name is not None and name in kwargs:
            return kwargs[name]
        return _MISSING

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        raw = self._raw(i, name)
        if raw is _MISSING:
            return default
        return self.builder.resolve(raw)

    def has_arg(self, i: int, name: str | None = None) -> bool:
        return self._raw(i, name) is not _MISSING

    def is_literal(self, i: int, name: str | None = None) -> bool:
        """True when the argument holds no graph value (written as a constant in the source)."""
        raw = self._raw(i, name)
        return raw is _MISSING or not _contains_node(raw)

    def raw_arg(self, i: int, name: str | None = None) -> Any:
        raw = self._raw(i, name)
        return None if raw is _MISSING else raw

    def tensor_args(self) -> list[TensorInfo]:
        return _flatten_infos([self.builder.resolve(a) for a in self.node.args]) + _flatten_infos(
            [self.builder.resolve(a) for a in self.node.kwargs.values()]
        )

    @property
    def out_shape(self) -> tuple[int, ...]:
        if not isinstance(self.out, TensorInfo):
            raise TypeError(f"{self.describe()} does not return a single tensor")
        return self.out.shape

    def describe(self) -> str:
        return self.builder.describe(self.node)

    # -- records -------------------------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        return self.builder.fresh(n)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.builder.uf.union_arrays(np.asarray(a), np.asarray(b))

    def freeze(self, what: TensorInfo | np.ndarray | None, reason: str) -> None:
        if isinstance(what, TensorInfo):
            what = what.ids
        if what is None or len(what) == 0:
            return
        self.builder.freeze(np.asarray(what), f"{self.describe()}: {reason}")

    def freeze_all_inputs(self, reason: str) -> None:
        for t in self.tensor_args():
            if t.tracked:
                self.freeze(t.ids, reason)

    def require_count(self, lhs: np.ndarray, expr: SizeExpr, reason: str) -> None:
        self.builder.require_count(lhs, expr.pos, expr.neg, expr.const, f"{self.describe()}: {reason}")

    def weight_ids(self, module: str, tensor: str, dim: int, role: str) -> np.ndarray:
        return self.builder.weight_ids(module, tensor, dim, role, self._module_type(module))

    def member(self, module: str, tensor: str, dim: int, ids: np.ndarray, role: str) -> None:
        self.builder.member(module, tensor, dim, np.asarray(ids), role, self._module_type(module))

    def _module_type(self, module: str) -> str:
        return self.builder.module_type(module)

    def param_shape(self, ref: ParamRef) -> tuple[int, ...]:
        return self.builder.param_shape(ref.module, ref.tensor)

    def bind(self, info: Any, dim: int, ids: np.ndarray) -> None:
        """Operand ``info`` must stay aligned with ``ids`` along its dimension ``dim``."""
        if not isinstance(info, TensorInfo):
            return
        dim = dim % info.ndim
        if info.shape[dim] == 1 and len(ids) != 1:
            if info.cdim == dim:
                self.freeze(info.ids, _BROADCAST.format(n=len(ids)))
            return  # broadcast
        if info.cdim == dim:
            self.union(info.ids, ids)
        elif info.param is not None and info.param.dims[dim] is not None:
            self.member(info.param.module, info.param.tensor, info.param.dims[dim], ids, "param")
        else:
            self.freeze(ids, f"meets a tensor whose dim {dim} is not a tracked channel space")

    # -- outputs -------------------------------------------------------------------------------------
    def tracked(self, cdim: int, ids: np.ndarray, shape: tuple[int, ...] | None = None) -> TensorInfo:
        shape = tuple(self.out_shape if shape is None else shape)
        cdim = cdim % len(shape)
        if shape[cdim] != len(ids):
            raise RuntimeError(
                f"rule for {self.describe()} gave {len(ids)} ids for a dim of size {shape[cdim]}"
            )
        return TensorInfo(shape, cdim, np.asarray(ids))

    def untracked(self, shape: tuple[int, ...] | None = None) -> TensorInfo:
        return TensorInfo(tuple(self.out_shape if shape is None else shape))

    def like(self, info: TensorInfo, shape: tuple[int, ...] | None = None) -> TensorInfo:
        """The output keeps ``info``'s channel space (same dim), e.g. an activation."""
        shape = tuple(self.out_shape if shape is None else shape)
        if info.cdim is not None and len(shape) == info.ndim and shape[info.cdim] == len(info.ids):
            return TensorInfo(shape, info.cdim, info.ids)
        if info.param is not None and len(shape) == info.ndim:
            return TensorInfo(shape, param=info.param)
        if info.cdim is not None:
            self.freeze(info.ids, "output shape does not keep the channel dim")
        return TensorInfo(shape)


_BROADCAST = (
    "broadcast over channels: a 1-channel operand is applied to {n} channels, so its single channel must stay"
)


def _contains_node(x: Any) -> bool:
    from torch.fx import Node

    if isinstance(x, Node):
        return True
    if isinstance(x, list | tuple):
        return any(_contains_node(i) for i in x)
    if isinstance(x, dict):
        return any(_contains_node(i) for i in x.values())
    if isinstance(x, slice):
        return any(_contains_node(i) for i in (x.start, x.stop, x.step))
    return False


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
_MODULE_RULES: dict[type, RuleFn] = {}
_FUNCTION_RULES: dict[Any, RuleFn] = {}
_METHOD_RULES: dict[str, RuleFn] = {}


def register_rule(
    target: Any,
    rule: RuleFn | None = None,
    *,
    passthrough: int | dict[int, int] | Iterable[tuple[int, int]] | None = None,
    reason: str | None = None,
) -> Any:
    """Declare how ``target`` moves channels.

    ``target``: an ``nn.Module`` subclass (made a tracing leaf), a function, a ``torch.library`` op, a
    ``torch.autograd.Function`` subclass, or a method name. Give either ``rule`` (a function of a
    :class:`RuleContext` returning the output info), or ``passthrough`` (tensor argument index → output
    index; every other tensor argument and output is frozen with ``reason``), or neither to use it as a
    decorator: ``@register_rule(MyModule)``.
    Registering again replaces the previous rule.
    """
    if rule is not None and passthrough is not None:
        raise ValueError("register_rule: give either rule= or passthrough=, not both")
    if rule is None and passthrough is None:

        def decorator(fn: RuleFn) -> RuleFn:
            register_rule(target, fn)
            return fn

        return decorator
    if passthrough is not None:
        rule = passthrough_rule(passthrough, reason or "read by meaning (declared by register_rule)")
    if not callable(rule):
        raise TypeError(f"register_rule: rule must be callable, got {type(rule).__name__}")
    target = _function_class(target)
    if isinstance(target, type) and issubclass(target, nn.Module):
        _MODULE_RULES[target] = rule
    elif isinstance(target, str):
        _METHOD_RULES[target] = rule
    elif callable(target):
        _FUNCTION_RULES[target] = rule
    else:
        raise TypeError(
            "register_rule: target must be an nn.Module subclass, a function, a torch.library op or a "
            f"method name, got {target!r}"
        )
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
            for t in _flatten_infos(a):
                if i not in used and t.tracked:
                    ctx.freeze(t.ids, reason)
        for k, v in ctx.node.kwargs.items():
            for t in _flatten_infos(ctx.builder.resolve(v)):
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


def lookup_rule(kind: str, target: Any, module: nn.Module | None = None) -> RuleFn | None:
    """The rule for a node (``kind`` as in torch.fx), or ``None`` if there is none."""
    if kind == "call_module":
        for cls in type(module).__mro__:
            if cls in _MODULE_RULES:
                return _MODULE_RULES[cls]
        return None
    if kind == "call_method":
        return _METHOD_RULES.get(target) or _METHOD_RULES.get(str(target).rstrip("_"))
    if kind == "call_function":
        function = getattr(target, "autograd_function", None)  # MyFunction.apply (graph/trace.py)
        if function is not None:
            return _FUNCTION_RULES.get(function) or getattr(target, "opaque_rule", None)
        try:
            if target in _FUNCTION_RULES:
                return _FUNCTION_RULES[target]
        except TypeError:
            return None
        packet = getattr(target, "overloadpacket", None)
        if packet is not None and packet in _FUNCTION_RULES:
            return _FUNCTION_RULES[packet]
        default = getattr(target, "default", None) if type(target).__name__ == "OpOverloadPacket" else None
        if default is not None and default in _FUNCTION_RULES:  # rule given for op.default
            return _FUNCTION_RULES[default]
    return None


def has_module_rule(module: nn.Module) -> bool:
    return any(cls in _MODULE_RULES for cls in type(module).__mro__)


def _reg(targets: Iterable[Any], rule: RuleFn) -> None:
    for t in targets:
        if t is None:
            continue
        if isinstance(t, type):
            _MODULE_RULES[t] = rule
        elif isinstance(t, str):
            _METHOD_RULES[t] = rule
        else:
            _FUNCTION_RULES[t] = rule


def _aten(*names: str) -> list[Any]:
    out = []
    for n in names:
        op = getattr(torch.ops.aten, n, None)
        if op is not None:
            out.append(op)
    return out


def _F(*names: str) -> list[Any]:
    return [getattr(F, n) for n in names if hasattr(F, n)]


def _torch(*names: str) -> list[Any]:
    return [getattr(torch, n) for n in names if hasattr(torch, n)]


def _nn(*names: str) -> list[type]:
    return [getattr(nn, n) for n in names if hasattr(nn, n)]


# --------------------------------------------------------------------------------------------------
# Element-wise
# --------------------------------------------------------------------------------------------------
def _words(text: str) -> list[str]:
    return text.split()


def _unary(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        x = ctx.arg(0, "self")
    if not isinstance(ctx.out, TensorInfo):
        return None
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    return ctx.like(x)


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
                ctx.freeze(t.ids, _BROADCAST.format(n=shape[d]))
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


def _where(ctx: RuleContext) -> Any:
    return elementwise(ctx, [ctx.arg(0, "condition"), ctx.arg(1, "input"), ctx.arg(2, "other")])


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
_UNARY_MODULES = _nn(
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
    addcdiv lerp masked_fill copysign xlogy
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


def _register_elementwise() -> None:
    method_names = [*_UNARY_NAMES, *(n + "_" for n in _UNARY_NAMES)]
    _reg(method_names, _unary)
    _reg(_torch(*_UNARY_NAMES) + _F(*_UNARY_NAMES) + _aten(*_UNARY_NAMES), _unary)
    _reg(_UNARY_MODULES, _unary_module)
    _reg([operator.neg, operator.pos, operator.invert], _unary)
    binary_methods = [*_BINARY_NAMES, *(n + "_" for n in _BINARY_NAMES), "__radd__", "__rmul__"]
    _reg(binary_methods, _ewise)
    _reg(_torch(*_BINARY_NAMES) + _aten(*_BINARY_NAMES) + _OPERATORS, _ewise)
    _reg(_torch("where") + _aten("where") + ["where"], _where)


def _unary_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


# --------------------------------------------------------------------------------------------------
# Layers with weights: conv, linear, norms, PReLU, embedding
# --------------------------------------------------------------------------------------------------
def _input_channels(ctx: RuleContext, x: Any, dim: int, what: str) -> np.ndarray | None:
    """``x``'s channel ids when they sit on ``dim``; otherwise freeze what is tracked and return None."""
    if not isinstance(x, TensorInfo):
        return None
    ids = x.ids_at(dim)
    if ids is None and x.tracked:
        ctx.freeze(x.ids, f"{what} reads channels on dim {dim % x.ndim}, but dim {x.cdim} is the tracked one")
    return ids


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
        if transposed:
            out_ids = np.tile(ctx.weight_ids(module, weight, 1, "out"), groups)
        else:
            out_ids = ctx.weight_ids(module, weight, 0, "out")
            blocks = out_ids.reshape(groups, per_out)
            for g in range(1, groups):
                ctx.union(blocks[0], blocks[g])
    if bias is not None:
        ctx.member(module, bias, 0, out_ids, "param")
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
        if b is not None and b.module != w.module:
            return None
        return conv_core(ctx, x, w.module, w.tensor, b.tensor if b else None, groups, transposed, adjustable)

    return rule


def linear_core(ctx: RuleContext, x: Any, module: str, weight: str, bias: str | None) -> TensorInfo:
    """``y = x W^T + b`` over the last dim: rows of W are new channels, columns consume ``x``'s."""
    in_ids = None
    if isinstance(x, TensorInfo):
        in_ids = _input_channels(ctx, x, x.ndim - 1, "linear layer")
    out_ids = ctx.weight_ids(module, weight, 0, "out")
    if in_ids is not None:
        ctx.member(module, weight, 1, in_ids, "in")
    if bias is not None:
        ctx.member(module, bias, 0, out_ids, "param")
    return ctx.tracked(-1, out_ids)


def _linear_module(ctx: RuleContext) -> Any:
    m = ctx.module
    return linear_core(
        ctx, ctx.arg(0, "input"), ctx.module_name, "weight", "bias" if m.bias is not None else None
    )


def _functional_linear(ctx: RuleContext) -> Any:
    w = _param_ref(ctx, ctx.arg(1, "weight"))
    b = _param_ref(ctx, ctx.arg(2, "bias"))
    if w is None or (b is not None and b.module != w.module):
        return None
    return linear_core(ctx, ctx.arg(0, "input"), w.module, w.tensor, b.tensor if b else None)


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
        return ctx.untracked()
    for t in tensors:
        if t is not None:
            ctx.member(module, t, 0, ids, "param")
    return ctx.like(x)


def _batchnorm_module(ctx: RuleContext) -> Any:
    m = ctx.module
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(m, n, None) is not None]
    return per_channel_core(ctx, ctx.arg(0, "input"), ctx.module_name, names, type(m).__name__)


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


def _functional_groupnorm(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    g = ctx.arg(1, "num_groups")
    w, b = _param_ref(ctx, ctx.arg(2, "weight")), _param_ref(ctx, ctx.arg(3, "bias"))
    if w is None or not isinstance(g, int) or not _owner_is(ctx, w, nn.GroupNorm):
        if isinstance(x, TensorInfo) and x.tracked:
            ctx.freeze(x.ids, "functional group_norm: its num_groups cannot follow the channels")
        return ctx.untracked()
    return groupnorm_core(ctx, x, w.module, g, [w.tensor] + ([b.tensor] if b else []))


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


def _functional_layernorm(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    shape = ctx.arg(1, "normalized_shape")
    n = len(shape) if isinstance(shape, list | tuple | torch.Size) else 1
    return layernorm_core(ctx, x, n)


def _instancenorm_module(ctx: RuleContext) -> Any:
    m = ctx.module
    names = [n for n in ("weight", "bias", "running_mean", "running_var") if getattr(m, n, None) is not None]
    return per_channel_core(ctx, ctx.arg(0, "input"), ctx.module_name, names, "InstanceNorm")


def _prelu_core(ctx: RuleContext, x: Any, module: str, tensor: str, n: int) -> Any:
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    if n == 1:
        return ctx.like(x)
    return per_channel_core(ctx, x, module, [tensor], "PReLU")


def _prelu_module(ctx: RuleContext) -> Any:
    return _prelu_core(ctx, ctx.arg(0, "input"), ctx.module_name, "weight", ctx.module.num_parameters)


def _functional_prelu(ctx: RuleContext) -> Any:
    w = _param_ref(ctx, ctx.arg(1, "weight"))
    if w is None:
        return None
    return _prelu_core(ctx, ctx.arg(0, "input"), w.module, w.tensor, math.prod(ctx.param_shape(w)))


def _embedding_module(ctx: RuleContext) -> Any:
    ids = ctx.weight_ids(ctx.module_name, "weight", 1, "out")
    return ctx.tracked(-1, ids)


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


# --------------------------------------------------------------------------------------------------
# Shape and layout ops
# --------------------------------------------------------------------------------------------------
def _dims_arg(ctx: RuleContext, start: int, name: str) -> list[Any]:
    """Variadic dims: ``x.view(a, b)`` or ``x.view((a, b))`` → raw per-dim arguments."""
    raw = list(ctx.node.args[start:])
    if not raw and name in ctx.node.kwargs:
        raw = [ctx.node.kwargs[name]]
    if len(raw) == 1 and isinstance(raw[0], list | tuple | torch.Size):
        raw = list(raw[0])
    return raw


def _reshape_blocks(a: Sequence[int], b: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input dims with runs of output dims whose sizes multiply to the same number."""
    blocks: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) or j < len(b):
        bi: list[int] = []
        bj: list[int] = []
        pa = pb = 1
        if i < len(a):
            pa *= a[i]
            bi.append(i)
            i += 1
        if j < len(b):
            pb *= b[j]
            bj.append(j)
            j += 1
        while pa != pb:
            if pa < pb and i < len(a):
                pa *= a[i]
                bi.append(i)
                i += 1
            elif j < len(b):
                pb *= b[j]
                bj.append(j)
                j += 1
            else:
                break
        blocks.append((bi, bj))
    return blocks


def reshape_core(ctx: RuleContext, x: Any, out_shape: Sequence[int], literal: Sequence[bool] | None) -> Any:
    """Map the channel dim through a reshape; ``literal[d]`` says output dim ``d``'s size was hard-coded.

    One channel dim → one output dim (sizes equal): follows. Channels merged with other dims (flatten into
    a Linear): each output position maps to its channel. A channel dim split in two (channel shuffle,
    heads): the hard-coded factor stays fixed, the other (``-1`` or computed) follows the pruning — outer
    free: consecutive blocks are units; inner free: position ``j`` of every block is one unit.
    A hard-coded size on a dim that must follow the channels freezes them.
    """
    out_shape = tuple(out_shape)
    if not isinstance(x, TensorInfo):
        return ctx.untracked(out_shape)
    if x.param is not None and not x.tracked:
        nz_in = [d for d, s in enumerate(x.shape) if s != 1]
        nz_out = [d for d, s in enumerate(out_shape) if s != 1]
        if [x.shape[d] for d in nz_in] == [out_shape[d] for d in nz_out]:
            dims: list[int | None] = [None] * len(out_shape)
            for di, do in zip(nz_in, nz_out):
                dims[do] = x.param.dims[di]
            return TensorInfo(out_shape, param=replace(x.param, dims=tuple(dims)))
        return TensorInfo(out_shape)
    if not x.tracked:
        return TensorInfo(out_shape)
    c = x.cdim
    for bi, bo in _reshape_blocks(x.shape, out_shape):
        if c not in bi:
            continue
        follows = [d for d in bo if literal is None or not literal[d]]
        if len(bi) == 1 and len(bo) == 1:
            if literal is not None and literal[bo[0]]:
                ctx.freeze(x.ids, f"reshape hard-codes {out_shape[bo[0]]} channels on dim {bo[0]}")
            return TensorInfo(out_shape, bo[0], x.ids)
        if len(bo) == 1:  # merge channel dim with others
            o = bo[0]
            if literal is not None and literal[o]:
                ctx.freeze(x.ids, f"reshape hard-codes the merged size {out_shape[o]} on dim {o}")
            coords = np.indices([x.shape[d] for d in bi]).reshape(len(bi), -1)
            ch = coords[bi.index(c)]
            return TensorInfo(out_shape, o, x.ids[ch])
        if len(bi) == 1 and len(bo) == 2 and len(follows) == 1:
            outer, inner = out_shape[bo[0]], out_shape[bo[1]]
            grid = x.ids.reshape(outer, inner)
            if follows[0] == bo[0]:  # blocks of `inner` consecutive channels are units
                for j in range(1, inner):
                    ctx.union(grid[:, 0], grid[:, j])
                return TensorInfo(out_shape, bo[0], grid[:, 0].copy())
            for g in range(1, outer):  # position j of every block is one unit
                ctx.union(grid[0], grid[g])
            return TensorInfo(out_shape, bo[1], grid[0].copy())
        ctx.freeze(x.ids, f"reshape {tuple(x.shape)} -> {out_shape} splits channels in a way with no rule")
        return TensorInfo(out_shape)
    ctx.freeze(x.ids, "reshape loses the channel dim")
    return TensorInfo(out_shape)


def _literal_flags(ctx: RuleContext, raw: list[Any]) -> list[bool] | None:
    from torch.fx import Node

    if len(raw) == 1 and isinstance(raw[0], Node):
        return None  # a whole shape computed in the forward: every dim follows
    flags = []
    for r in raw:
        if isinstance(r, Node):
            flags.append(False)
        else:
            flags.append(r != -1)
    return flags


def _size_source(node: Any, builder: Any) -> tuple[Any, int | list[int]] | None:
    """Where a size argument comes from: ``(tensor node, k)`` for ``t.shape[k]`` / ``t.size(k)``,
    ``(tensor node, [dims])`` for ``t.shape`` / ``t.size()`` / ``t.shape[a:b]``; ``None`` otherwise."""
    from torch.fx import Node

    if not isinstance(node, Node):
        return None
    if node.op == "call_method" and node.target == "size" and node.args:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dim, int):
            return (node.args[0], dim)
        shape = builder.meta.get(node)
        return (node.args[0], list(range(len(shape)))) if dim is None and shape is not None else None
    if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
        return (node.args[0], list(range(len(builder.meta[node]))))
    if node.op == "call_function" and node.target is operator.getitem:
        inner = _size_source(node.args[0], builder)
        if inner is None or not isinstance(inner[1], list):
            return None
        idx = node.args[1]
        if isinstance(idx, int):
            return (inner[0], inner[1][idx])
        if isinstance(idx, slice) and all(isinstance(v, int | None) for v in (idx.start, idx.stop, idx.step)):
            return (inner[0], inner[1][idx])
    return None


_NO_IDS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True)
class SizeExpr:
    """A size the forward computes, as it will be after shrinking: ``kept(pos) - kept(neg) + const``.

    ``t.shape[c]`` of a tracked channel dim counts ``t``'s channels (``pos = t.ids``); other dims and
    Python numbers are constants; ``+``/``-`` combine. ``literal``: a hard-coded number takes part.
    """

    pos: np.ndarray
    neg: np.ndarray
    const: int
    literal: bool

    def __neg__(self) -> SizeExpr:
        return SizeExpr(self.neg, self.pos, -self.const, self.literal)


def size_expr(ctx: RuleContext, raw: Any) -> SizeExpr | None:
    """What a size argument (a raw fx argument) counts, or ``None`` when the graph cannot follow it."""
    from torch.fx import Node

    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return SizeExpr(_NO_IDS, _NO_IDS, raw, raw != 0)
    if not isinstance(raw, Node):
        return None
    memo = ctx.builder.size_exprs
    if raw not in memo:
        memo[raw] = _size_expr_of_node(ctx, raw)
    return memo[raw]


def _size_expr_of_node(ctx: RuleContext, node: Any) -> SizeExpr | None:
    value = ctx.builder.infos.get(node)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    source = _size_source(node, ctx.builder)
    if source is not None:
        if not isinstance(source[1], int):
            return None
        t = ctx.builder.resolve(source[0])
        if not isinstance(t, TensorInfo) or t.ndim == 0:
            return None
        k = source[1] % t.ndim
        if t.tracked and k == t.cdim:
            return SizeExpr(t.ids, _NO_IDS, 0, False)
        if t.param is not None and t.param.dims[k] is not None:
            return None  # a parameter's dim may be shrunk
        return SizeExpr(_NO_IDS, _NO_IDS, value, False)  # batch or spatial size: not changed by shrinking
    if node.op == "call_function" and node.target is operator.neg and len(node.args) == 1:
        a = size_expr(ctx, node.args[0])
        return None if a is None else -a
    if node.op == "call_function" and node.target in (operator.add, operator.sub) and len(node.args) == 2:
        a, b = size_expr(ctx, node.args[0]), size_expr(ctx, node.args[1])
        if a is None or b is None:
            return None
        if node.target is operator.sub:
            b = -b
        return SizeExpr(
            np.concatenate([a.pos, b.pos]),
            np.concatenate([a.neg, b.neg]),
            a.const + b.const,
            a.literal or b.literal,
        )
    return None


def _fmt_size(raw: Any, value: Any) -> str:
    from torch.fx import Node

    return f"{value}" if not isinstance(raw, Node) else f"{raw.name}={value}"


_FOLLOW_HINT = "sizes computed from tensor shapes (t.shape[1]) would follow the pruning"


def require_segments(
    ctx: RuleContext,
    x: TensorInfo,
    requirements: Sequence[tuple[np.ndarray, SizeExpr | None, str]],
    hard_coded: str,
) -> bool:
    """Record that each piece ``lhs`` of ``x``'s channels must be counted by its size expression.

    ``requirements``: ``(lhs, expr, where)`` with ``where`` naming the piece or boundary. A size the
    graph cannot follow, or any size under torch.export (every size is specialised there), freezes all of
    ``x``'s channels now (returns False); otherwise the checks run once the graph is complete: a piece
    that holds whole segments of the space (a concat's parts, counted by the shapes they come from)
    stays prunable; a hard-coded size (``hard_coded`` names it) or a boundary inside a segment freezes
    the groups it touches.
    """
    if ctx.builder.method != "fx":
        what = hard_coded.split(" with ")[0]
        ctx.freeze(x.ids, f"{what}: torch.export specialises every size, so none can follow the pruning")
        return False
    if any(e is None for _, e, _ in requirements):
        ctx.freeze(
            x.ids,
            f"{hard_coded.split(' with ')[0]} with sizes computed in a way the graph cannot "
            "follow (only t.shape[k], t.size(k), numbers, + and - are)",
        )
        return False
    for lhs, expr, where in requirements:
        if expr.literal:
            reason = f"{hard_coded}: {_FOLLOW_HINT}"
        else:
            reason = (
                f"{where}: a boundary falls inside a segment of the {len(x.ids)} channels (the size it is "
                "computed from does not count the same channels)"
            )
        ctx.require_count(lhs, expr, reason)
    return True


def _boundary(
    ctx: RuleContext, ids: np.ndarray, raw: Any, value: int
) -> tuple[np.ndarray, SizeExpr | None] | None:
    """The requirement of a slice bound ``value`` (from argument ``raw``) over channels ``ids``:
    a bound ``b >= 0`` counts ``ids[:b]``, a negative one counts ``ids[b:]`` (from the end)."""
    n = len(ids)
    expr = size_expr(ctx, raw)
    if value < 0:
        return ids[max(0, n + value) :], (-expr if expr is not None else None)
    if isinstance(raw, int) and value >= n:
        return None  # a literal past the end: still the end after shrinking
    return ids[: min(value, n)], expr


def _view(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    raw = _dims_arg(ctx, 1, "shape" if "shape" in ctx.node.kwargs else "size")
    flags = _literal_flags(ctx, raw)
    if flags is not None and len(flags) != len(ctx.out_shape):
        flags = None
    if ctx.builder.method == "export" and flags is not None:
        flags = [True] * len(flags)  # export specialises every size: nothing is known to follow
    out = reshape_core(ctx, x, ctx.out_shape, flags)
    # a size read from a tensor's channel dim ties those channels to the output dim it sizes
    whole = _size_source(raw[0], ctx.builder) if len(raw) == 1 else None
    if whole is not None and isinstance(whole[1], list) and len(whole[1]) == len(ctx.out_shape):
        sources = [(d, (whole[0], k)) for d, k in enumerate(whole[1])]
    else:
        sources = [(d, _size_source(r, ctx.builder)) for d, r in enumerate(raw)] if flags is not None else []
    for d, source in sources:
        if source is None or not isinstance(source[1], int):
            continue
        t = ctx.builder.resolve(source[0])
        if not isinstance(t, TensorInfo) or not t.tracked or source[1] % t.ndim != t.cdim:
            continue
        if isinstance(out, TensorInfo) and out.cdim == d and len(out.ids) == len(t.ids):
            labels = ctx.builder.uf.labels()
            if set(labels[out.ids].tolist()) != set(labels[t.ids].tolist()):  # not the same units already
                ctx.union(out.ids, t.ids)  # equal counts: tying position by position is sufficient
        else:
            ctx.freeze(t.ids, f"reshape sizes its dim {d} with this tensor's channel count")
    return out


def _view_as(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


def _flatten(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


def _flatten_module(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


def _unflatten(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.arg(1, "dim") % x.ndim
    sizes = list(ctx.raw_arg(2, "sizes"))
    flags = [False] * len(ctx.out_shape)
    from torch.fx import Node

    for k, s in enumerate(sizes):
        flags[dim + k] = not isinstance(s, Node) and s != -1
    return reshape_core(ctx, x, ctx.out_shape, flags)


def _unflatten_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    m = ctx.module
    dim = m.dim % (len(ctx.out_shape) - len(m.unflattened_size) + 1)
    flags = [False] * len(ctx.out_shape)
    for k, s in enumerate(m.unflattened_size):
        flags[dim + k] = s != -1
    return reshape_core(ctx, x, ctx.out_shape, flags)


def _move(x: TensorInfo, perm: Sequence[int], out_shape: tuple[int, ...]) -> TensorInfo:
    """Output dim ``d`` is input dim ``perm[d]``."""
    perm = [p % x.ndim for p in perm]
    if x.tracked:
        return TensorInfo(out_shape, perm.index(x.cdim), x.ids)
    if x.param is not None:
        return TensorInfo(out_shape, param=replace(x.param, dims=tuple(x.param.dims[p] for p in perm)))
    return TensorInfo(out_shape)


def _permute(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    raw = _dims_arg(ctx, 1, "dims")
    perm = [ctx.builder.resolve(r) for r in raw]
    return _move(x, perm, ctx.out_shape)


def _transpose(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    if ctx.has_arg(1, "dim0"):
        d0, d1 = ctx.arg(1, "dim0") % x.ndim, ctx.arg(2, "dim1") % x.ndim
    else:  # .t()
        d0, d1 = 0, max(0, x.ndim - 1)
    perm = list(range(x.ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _move(x, perm, ctx.out_shape)


def _movedim(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    src, dst = ctx.arg(1, "source"), ctx.arg(2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src = [s % x.ndim for s in src]
    dst = [d % x.ndim for d in dst]
    perm: list[int | None] = [None] * x.ndim
    for s, d in zip(src, dst):
        perm[d] = s
    rest = iter([i for i in range(x.ndim) if i not in src])
    perm = [p if p is not None else next(rest) for p in perm]
    return _move(x, perm, ctx.out_shape)


def _unsqueeze(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    d = ctx.arg(1, "dim") % (x.ndim + 1)
    perm: list[int | None] = list(range(x.ndim))
    perm.insert(d, None)
    return _insert_dims(x, perm, ctx.out_shape)


def _insert_dims(x: TensorInfo, src: Sequence[int | None], out_shape: tuple[int, ...]) -> TensorInfo:
    """Output dim ``d`` is input dim ``src[d]`` (``None``: a new dim of size 1)."""
    if x.tracked:
        return TensorInfo(out_shape, list(src).index(x.cdim), x.ids)
    if x.param is not None:
        return TensorInfo(
            out_shape, param=replace(x.param, dims=tuple(None if s is None else x.param.dims[s] for s in src))
        )
    return TensorInfo(out_shape)


def _squeeze(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.arg(1, "dim")
    if dim is None:
        dims = [d for d, s in enumerate(x.shape) if s == 1]
    else:
        dims = [dim] if isinstance(dim, int) else list(dim)
        dims = [d % x.ndim for d in dims if x.shape[d % x.ndim] == 1]
    if x.tracked and x.cdim in dims:
        ctx.freeze(x.ids, "squeeze removes the (single) channel dim")
        return ctx.untracked()
    src = [d for d in range(x.ndim) if d not in dims]
    return _insert_dims(x, src, ctx.out_shape)


def _expand(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    out = ctx.out_shape
    lead = len(out) - x.ndim
    src = [None] * lead + list(range(x.ndim))
    if x.tracked and out[x.cdim + lead] != len(x.ids):
        c = x.cdim + lead
        ctx.freeze(x.ids, _BROADCAST.format(n=out[c]) + " (expand)")
        # the copies follow the tensor whose channel count sizes them: expand_as(t), expand(t.shape[1])
        if ctx.node.target == "expand_as":
            sizer = ctx.arg(1, "other")
            sized = (sizer, c) if isinstance(sizer, TensorInfo) else None
        else:
            raw = _dims_arg(ctx, 1, "size")
            src = _size_source(raw[c], ctx.builder) if len(raw) == len(out) else None
            sized = (
                (ctx.builder.resolve(src[0]), src[1]) if src is not None and isinstance(src[1], int) else None
            )
        if sized is not None:
            t, k = sized
            if isinstance(t, TensorInfo) and t.tracked and k % t.ndim == t.cdim and len(t.ids) == out[c]:
                return ctx.tracked(c, t.ids)
        return ctx.untracked()
    return _insert_dims(x, src, out)


def _repeat(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    reps = [ctx.builder.resolve(r) for r in _dims_arg(ctx, 1, "repeats")]
    out = ctx.out_shape
    lead = len(out) - x.ndim
    if x.tracked:
        k = reps[x.cdim + lead]
        return TensorInfo(out, x.cdim + lead, np.tile(x.ids, k))
    if x.param is not None and all(r == 1 for r in reps[lead:]):
        return _insert_dims(x, [None] * lead + list(range(x.ndim)), out)
    return ctx.untracked()


def _cat(ctx: RuleContext) -> Any:
    tensors = ctx.arg(0, "tensors")
    if not isinstance(tensors, list | tuple):
        return None
    tensors = [t for t in tensors if isinstance(t, TensorInfo)]
    out = ctx.out_shape
    dim = ctx.arg(1, "dim", 0) % len(out)
    if any(t.tracked and t.cdim == dim for t in tensors):
        segs = []
        for t in tensors:
            if t.ndim != len(out):
                continue  # legacy empty tensors
            ids = t.ids_at(dim)
            if ids is None:
                ids = ctx.fresh(t.shape[dim])
                if t.param is not None and t.param.dims[dim] is not None:
                    ctx.member(t.param.module, t.param.tensor, t.param.dims[dim], ids, "param")
                else:
                    ctx.freeze(ids, "concatenated with a tensor whose channels are not tracked")
                if t.tracked:
                    ctx.freeze(t.ids, f"concatenated along dim {dim}, not along its channels")
            segs.append(ids)
        return TensorInfo(out, dim, np.concatenate(segs))
    return elementwise(ctx, tensors) if any(t.tracked for t in tensors) else ctx.untracked()


def _stack(ctx: RuleContext) -> Any:
    tensors = [t for t in (ctx.arg(0, "tensors") or []) if isinstance(t, TensorInfo)]
    out = ctx.out_shape
    dim = ctx.arg(1, "dim", 0) % len(out)
    base = next((t for t in tensors if t.tracked), None)
    if base is None:
        return ctx.untracked()
    c = base.cdim
    for t in tensors:
        if t is not base:
            ctx.bind(t, c, base.ids)
    return TensorInfo(out, c if c < dim else c + 1, base.ids)


def _split_like(ctx: RuleContext, x: TensorInfo, dim: int, sizes: list[int], follows: bool) -> Any:
    outs = ctx.out if isinstance(ctx.out, tuple | list) else [ctx.out]
    if not x.tracked or x.cdim != dim:
        return type(ctx.out)(ctx.like(x, o.shape) for o in outs)
    equal = len(set(sizes)) == 1
    if not (follows and equal):
        why = "unequal parts" if not equal else "hard-coded split sizes"
        ctx.freeze(x.ids, f"split along the channels into {why}")
    elif len(sizes) > 1:
        grid = x.ids.reshape(len(sizes), sizes[0])
        for g in range(1, len(sizes)):
            ctx.union(grid[0], grid[g])
    res, start = [], 0
    for o, s in zip(outs, sizes):
        res.append(TensorInfo(o.shape, dim, x.ids[start : start + s]))
        start += s
    return type(ctx.out)(res)


def _chunk(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(2, "dim", 0) % x.ndim
    sizes = [o.shape[dim] for o in ctx.out]
    return _split_like(ctx, x, dim, sizes, follows=sum(sizes) == x.shape[dim])


def _split(ctx: RuleContext) -> Any:
    """``split(x, size)``: equal parts as :func:`_chunk`; ``split(x, [sizes])`` / ``split_with_sizes``:
    each part takes its segment of the channels (:func:`require_segments`)."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(2, "dim", 0) % x.ndim
    sizes = [o.shape[dim] for o in ctx.out]
    size_arg = _MISSING
    for name in ("split_size_or_sections", "split_size", "split_sizes"):
        if size_arg is _MISSING:
            size_arg = ctx._raw(1, name)
    from torch.fx import Node

    if isinstance(size_arg, list | tuple) and x.tracked and x.cdim == dim and sum(sizes) == x.shape[dim]:
        return _split_sections(ctx, x, dim, sizes, list(size_arg))
    follows = isinstance(size_arg, Node) and ctx.builder.method == "fx" and sum(sizes) == x.shape[dim]
    return _split_like(ctx, x, dim, sizes, follows)


def _split_sections(ctx: RuleContext, x: TensorInfo, dim: int, sizes: list[int], raw: list[Any]) -> Any:
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    pieces = [x.ids[starts[k] : starts[k + 1]] for k in range(len(sizes))]
    shown = ", ".join(_fmt_size(r, v) for r, v in zip(raw, sizes))
    reqs = [
        (piece, size_expr(ctx, r), f"split part {k} (channels {starts[k]}:{starts[k + 1]})")
        for k, (piece, r) in enumerate(zip(pieces, raw))
    ]
    require_segments(ctx, x, reqs, f"split along the channels with hard-coded split sizes [{shown}]")
    return type(ctx.out)(TensorInfo(o.shape, dim, p) for o, p in zip(ctx.out, pieces))


def _narrow(ctx: RuleContext) -> Any:
    """``narrow(x, dim, start, length)``: the channels ``start:start+length`` when both follow the shapes."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim, start, length = ctx.arg(1, "dim") % x.ndim, ctx.arg(2, "start"), ctx.arg(3, "length")
    if not (x.tracked and x.cdim == dim):
        return ctx.like(x)
    if not isinstance(start, int) or not isinstance(length, int):
        ctx.freeze(x.ids, "narrow with a tensor start picks channels by position")
        return ctx.untracked()
    n = len(x.ids)
    first = start + n if start < 0 else start
    bound = _boundary(ctx, x.ids, ctx.raw_arg(2, "start"), start)
    reqs = [] if bound is None else [(*bound, f"narrow start {start}")]
    reqs.append(
        (
            x.ids[first : first + length],
            size_expr(ctx, ctx.raw_arg(3, "length")),
            f"narrow {first}:{first + length}",
        )
    )
    shown = f"{_fmt_size(ctx.raw_arg(2, 'start'), start)}, {_fmt_size(ctx.raw_arg(3, 'length'), length)}"
    what = f"narrow picks channels by position with hard-coded start, length ({shown})"
    require_segments(ctx, x, reqs, what)
    return ctx.tracked(dim, x.ids[first : first + length])


def _unbind(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(1, "dim", 0) % x.ndim
    res = []
    for o in ctx.out:
        if x.tracked and x.cdim == dim:
            ctx.freeze(x.ids, "unbind splits the channels into separate tensors")
            res.append(TensorInfo(o.shape))
        elif x.tracked:
            res.append(TensorInfo(o.shape, x.cdim - (1 if x.cdim > dim else 0), x.ids))
        else:
            res.append(TensorInfo(o.shape))
    return type(ctx.out)(res)


def _getitem(ctx: RuleContext) -> Any:
    obj = ctx.arg(0)
    idx = ctx.arg(1)
    if not isinstance(obj, TensorInfo):
        if isinstance(obj, list | tuple | dict) and not isinstance(idx, TensorInfo):
            return obj[idx]
        return None
    return index_core(ctx, obj, idx, ctx.raw_arg(1))


def _full_slice(s: Any, size: int) -> bool:
    if not isinstance(s, slice):
        return False
    start, stop, step = s.indices(size)
    return start == 0 and stop == size and step == 1


def index_core(ctx: RuleContext, x: TensorInfo, idx: Any, raw_idx: Any = _MISSING) -> Any:
    """Basic indexing ``x[...]``: slices, ints, ``None``, ``...``. The channel dim is taken whole, or
    sliced with step 1 into a segment whose bounds follow the shapes (``raw_idx``: the fx argument, to
    tell computed bounds from hard-coded ones; see :func:`require_segments`)."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    raws = list(raw_idx) if isinstance(raw_idx, tuple) else [raw_idx]
    if len(raws) != len(items):
        raws = [_MISSING] * len(items)
    if any(isinstance(i, TensorInfo | list) for i in items):
        ctx.freeze(x.ids, "advanced indexing") if x.tracked else None
        return ctx.untracked() if isinstance(ctx.out, TensorInfo) else None
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (x.ndim - n_real) + items[k + 1 :]
        raws = raws[:k] + [slice(None)] * (x.ndim - n_real) + raws[k + 1 :]
    pad = x.ndim - sum(1 for i in items if i is not None)
    items += [slice(None)] * pad
    raws += [slice(None)] * pad
    src: list[int | None] = []
    d = 0
    channel_ok, explained = True, False
    ids = x.ids
    for it, raw in zip(items, raws):
        if it is None:
            src.append(None)
            continue
        if isinstance(it, slice):
            if d == x.cdim and not _full_slice(it, x.shape[d]):
                segment = _channel_slice(ctx, x, it, raw)
                if isinstance(segment, np.ndarray):
                    ids = segment
                else:
                    channel_ok, explained = False, segment
            if x.param is not None and not x.tracked and not _full_slice(it, x.shape[d]):
                channel_ok = False
            src.append(d)
        else:  # an int removes the dim
            if d == x.cdim:
                channel_ok = False
        d += 1
    out = ctx.out_shape
    if x.tracked:
        if not channel_ok:
            if not explained:
                ctx.freeze(x.ids, "indexing picks channels by position (hard-coded channel selection)")
            return TensorInfo(out)
        return TensorInfo(out, src.index(x.cdim), ids)
    if x.param is not None and channel_ok:
        return _insert_dims(x, src, out)
    return TensorInfo(out)


def _channel_slice(ctx: RuleContext, x: TensorInfo, it: slice, raw: Any) -> np.ndarray | bool:
    """The channels ``x[:, a:b]`` keeps, with the requirements on its bounds recorded; ``False`` when the
    slice is strided or its bounds were not seen (the caller freezes), ``True`` when frozen here."""
    n = len(x.ids)
    if not isinstance(raw, slice) or it.step not in (None, 1):
        return False
    start, stop, _ = it.indices(n)
    reqs = []
    for name, value, raw_v in (("start", it.start, raw.start), ("stop", it.stop, raw.stop)):
        if value is None:
            continue
        bound = _boundary(ctx, x.ids, raw_v, value)
        if bound is not None:
            reqs.append((*bound, f"slice {name} {value}"))
    shown = f"{'' if it.start is None else it.start}:{'' if it.stop is None else it.stop}"
    what = f"slicing picks channels by position with hard-coded bounds [{shown}]"
    if not require_segments(ctx, x, reqs, what):
        return True
    return x.ids[start : max(start, stop)]


def _slice_aten(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.arg(1, "dim", 0) % x.ndim
    idx = [slice(None)] * x.ndim
    idx[dim] = slice(ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1))
    return index_core(ctx, x, tuple(idx))


def _select_aten(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.arg(1, "dim") % x.ndim
    idx = [slice(None)] * x.ndim
    idx[dim] = ctx.arg(2, "index")
    return index_core(ctx, x, tuple(idx))


def _pad(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    pad = ctx.arg(1, "pad")
    if ctx.module is not None:
        pad = list(ctx.module.padding) if isinstance(ctx.module.padding, tuple | list) else None
        if pad is None:
            pad = [ctx.module.padding] * (2 * _spatial_of(ctx.module))
    touched = {x.ndim - 1 - k // 2 for k, p in enumerate(pad or []) if p != 0}
    if x.tracked and x.cdim in touched:
        ctx.freeze(x.ids, "padding along the channel dim")
        return ctx.untracked()
    return ctx.like(x)


def _spatial_of(module: nn.Module) -> int:
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
            n = _spatial_of(ctx.module) if ctx.module is not None else max(1, x.ndim - 2)
        outs = ctx.out if isinstance(ctx.out, tuple | list) else (ctx.out,)
        if x.tracked and x.cdim >= x.ndim - n:
            ctx.freeze(x.ids, f"{what} over the channel dim")
            res = [TensorInfo(o.shape) for o in outs]
        else:
            res = [ctx.like(x, o.shape) for o in outs]
        return type(ctx.out)(res) if isinstance(ctx.out, tuple | list) else res[0]

    return rule


def _interp(ctx: RuleContext) -> Any:
    return (
        _spatial_rule(None, "interpolation")(ctx)
        if ctx.module is None
        else _spatial_rule(None, "upsampling")(ctx)
    )


def _upsample_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    n = max(1, x.ndim - 2) if isinstance(x, TensorInfo) else 2
    return _spatial_rule(n, "upsampling")(ctx)


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


def _pixel_unshuffle(ctx: RuleContext) -> Any:
    r = ctx.module.downscale_factor if ctx.module is not None else ctx.arg(1, "downscale_factor")
    return _pixel_shuffle_core(ctx, ctx.arg(0, "input"), r, False)


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


def _softmax2d_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if isinstance(x, TensorInfo) and x.tracked and x.cdim == x.ndim - 3:
        ctx.freeze(x.ids, "Softmax2d over the channels")
        return ctx.untracked()
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


def _normalize(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    dim = ctx.arg(2, "dim", 1)
    if isinstance(x, TensorInfo) and x.tracked and dim % x.ndim == x.cdim:
        ctx.freeze(x.ids, "normalisation over the channels")
        return ctx.untracked()
    return ctx.like(x) if isinstance(x, TensorInfo) else ctx.untracked()


def _flip_roll(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dims = ctx.arg(2, "dims") if ctx.node.target in ("roll", torch.roll) else ctx.arg(1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if x.tracked and x.cdim in [d % x.ndim for d in dims]:
        ctx.freeze(x.ids, "flip/roll reorders the channels")
        return ctx.untracked()
    return ctx.like(x)


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


def _norm(ctx: RuleContext) -> Any:
    """``torch.norm(x, p, dim, keepdim)`` / ``linalg.vector_norm(x, ord, dim, keepdim)``."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    c = _reduce_dims(ctx, x, ctx.arg(2, "dim"), bool(ctx.arg(3, "keepdim", False)))
    if isinstance(c, int):
        return TensorInfo(ctx.out_shape, c, x.ids)
    return ctx.untracked()


def _new_tensor(ctx: RuleContext) -> Any:
    """``x.new_zeros(shape)`` and friends read only ``x``'s dtype and device."""
    return ctx.untracked()


def _index_select(ctx: RuleContext) -> Any:
    """``index_select(x, dim, index)`` / ``gather``-free picks along a non-channel dim pass through."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(1, "dim") % x.ndim
    if x.tracked and x.cdim == dim:
        ctx.freeze(x.ids, "index_select picks channels by position")
        return ctx.untracked()
    return ctx.like(x)


def _getattr(ctx: RuleContext) -> Any:
    """Attributes that hold tensors: ``.values``/``.indices`` of ``max(dim)``, ``.data``, ``.T``/``.mT``."""
    obj, name = ctx.arg(0), ctx.arg(1)
    if isinstance(obj, tuple) and name in ("values", "indices") and len(obj) == 2:
        return obj[0 if name == "values" else 1]
    if not isinstance(obj, TensorInfo):
        return None
    if name in ("data", "real"):
        return ctx.like(obj)
    if name in ("T", "mT") and obj.ndim >= 2:
        perm = list(range(obj.ndim))
        if name == "T":
            perm.reverse()
        else:
            perm[-2], perm[-1] = perm[-1], perm[-2]
        return _move(obj, perm, ctx.out_shape)
    return None


def _masked_fill(ctx: RuleContext) -> Any:
    return elementwise(ctx, [ctx.arg(0, "input"), ctx.arg(1, "mask")])


def _no_tensor_output(ctx: RuleContext) -> Any:
    return ctx.out


def _register_builtin() -> None:
    _register_elementwise()
    conv_modules = _nn("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
    _reg(conv_modules, _conv_module)
    _reg(_F("conv1d", "conv2d", "conv3d") + _aten("conv1d", "conv2d", "conv3d"), _functional_conv(False))
    _reg(
        _F("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
        + _aten("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
        _functional_conv(True),
    )
    _reg(_nn("Linear", "Bilinear")[:1], _linear_module)
    _reg(_F("linear") + _aten("linear"), _functional_linear)
    _reg(_nn("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"), _batchnorm_module)
    _reg(_F("batch_norm"), _functional_batchnorm(["running_mean", "running_var", "weight", "bias"]))
    _reg(_aten("batch_norm"), _functional_batchnorm(["weight", "bias", "running_mean", "running_var"]))
    _reg(
        _aten("_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"),
        _functional_batchnorm(["weight", "bias", "running_mean", "running_var"]),
    )
    _reg(_nn("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"), _instancenorm_module)
    _reg(_nn("GroupNorm"), _groupnorm_module)
    _reg(_F("group_norm") + _aten("group_norm"), _functional_groupnorm)
    _reg(_nn("LayerNorm"), _layernorm_module)
    _reg(_F("layer_norm") + _aten("layer_norm"), _functional_layernorm)
    _reg(_nn("PReLU"), _prelu_module)
    _reg(_F("prelu") + _torch("prelu") + _aten("prelu", "_prelu_kernel"), _functional_prelu)
    _reg(_nn("Embedding"), _embedding_module)
    _reg(_nn("MultiheadAttention"), _mha_module)
    _reg(["view", "reshape"] + _torch("reshape") + _aten("view", "reshape", "_unsafe_view"), _view)
    _reg(["view_as", "reshape_as"], _view_as)
    _reg(["flatten"] + _torch("flatten") + _aten("flatten"), _flatten)
    _reg(_nn("Flatten"), _flatten_module)
    _reg(["unflatten"] + _torch("unflatten") + _aten("unflatten"), _unflatten)
    _reg(_nn("Unflatten"), _unflatten_module)
    _reg(["permute"] + _torch("permute") + _aten("permute"), _permute)
    _reg(
        ["transpose", "swapaxes", "swapdims", "t"]
        + _torch("transpose", "swapaxes", "swapdims", "t")
        + _aten("transpose", "t"),
        _transpose,
    )
    _reg(["movedim", "moveaxis"] + _torch("movedim", "moveaxis") + _aten("movedim"), _movedim)
    _reg(["unsqueeze"] + _torch("unsqueeze") + _aten("unsqueeze"), _unsqueeze)
    _reg(["squeeze"] + _torch("squeeze") + _aten("squeeze"), _squeeze)
    _reg(["expand", "expand_as"] + _aten("expand"), _expand)
    _reg(["repeat"] + _aten("repeat"), _repeat)
    _reg(_torch("cat", "concat", "concatenate") + _aten("cat", "concat"), _cat)
    _reg(_torch("stack") + _aten("stack"), _stack)
    _reg(["chunk"] + _torch("chunk") + _aten("chunk"), _chunk)
    _reg(
        ["split", "split_with_sizes"]
        + _torch("split", "split_with_sizes")
        + _aten("split", "split_with_sizes"),
        _split,
    )
    _reg(["narrow"] + _torch("narrow") + _aten("narrow"), _narrow)
    _reg(["unbind"] + _torch("unbind") + _aten("unbind"), _unbind)
    _reg([operator.getitem], _getitem)
    _reg(_aten("slice"), _slice_aten)
    _reg(_aten("select"), _select_aten)
    _reg(_F("pad") + _aten("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d"), _pad)
    _reg(
        _nn(
            "ZeroPad1d",
            "ZeroPad2d",
            "ZeroPad3d",
            "ConstantPad1d",
            "ConstantPad2d",
            "ConstantPad3d",
            "ReflectionPad1d",
            "ReflectionPad2d",
            "ReflectionPad3d",
            "ReplicationPad1d",
            "ReplicationPad2d",
            "ReplicationPad3d",
            "CircularPad1d",
            "CircularPad2d",
            "CircularPad3d",
        ),
        _pad,
    )
    for k in (1, 2, 3):
        pools = [
            f"max_pool{k}d",
            f"avg_pool{k}d",
            f"adaptive_avg_pool{k}d",
            f"adaptive_max_pool{k}d",
            f"lp_pool{k}d",
            f"fractional_max_pool{k}d",
            f"max_pool{k}d_with_indices",
            f"_adaptive_avg_pool{k}d",
            f"upsample_nearest{k}d",
            f"upsample_bilinear{k}d",
        ]
        _reg(_F(*pools) + _torch(*pools) + _aten(*pools), _spatial_rule(k))
        mods = [f"MaxPool{k}d", f"AvgPool{k}d", f"AdaptiveAvgPool{k}d", f"AdaptiveMaxPool{k}d", f"LPPool{k}d"]
        _reg(_nn(*mods), _spatial_rule(k))
    _reg(
        _aten("upsample_bicubic2d", "upsample_trilinear3d", "upsample_linear1d"),
        _spatial_rule(None, "interp"),
    )
    _reg(_F("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"), _interp)
    _reg(_nn("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d"), _upsample_module)
    _reg(
        _F("pixel_shuffle") + _torch("pixel_shuffle") + _aten("pixel_shuffle") + _nn("PixelShuffle"),
        _pixel_shuffle,
    )
    _reg(
        _F("pixel_unshuffle") + _torch("pixel_unshuffle") + _aten("pixel_unshuffle") + _nn("PixelUnshuffle"),
        _pixel_unshuffle,
    )
    _reg(
        _F("channel_shuffle")
        + _torch("channel_shuffle", "native_channel_shuffle")
        + _aten("channel_shuffle", "native_channel_shuffle")
        + _nn("ChannelShuffle"),
        _channel_shuffle,
    )
    reductions = [
        "mean",
        "sum",
        "amax",
        "amin",
        "max",
        "min",
        "logsumexp",
        "prod",
        "argmax",
        "argmin",
        "all",
        "any",
        "nansum",
        "nanmean",
        "median",
        "count_nonzero",
    ]
    _reg(reductions + _torch(*reductions) + _aten(*reductions), _reduction)
    _reg(["var", "std"] + _torch("var", "std") + _aten("var", "std"), _var_std)
    _reg(
        ["softmax", "log_softmax"]
        + _F("softmax", "log_softmax", "softmin")
        + _torch("softmax", "log_softmax")
        + _aten("softmax", "_softmax", "log_softmax", "_log_softmax")
        + _nn("Softmax", "LogSoftmax", "Softmin"),
        _softmax,
    )
    _reg(_nn("Softmax2d"), _softmax2d_module)
    _reg(_F("normalize"), _normalize)
    _reg(["flip", "roll"] + _torch("flip", "roll") + _aten("flip", "roll"), _flip_roll)
    _reg(
        ["matmul", "bmm", "mm", "__matmul__"]
        + _torch("matmul", "bmm", "mm")
        + _aten("matmul", "bmm", "mm")
        + [operator.matmul],
        _matmul,
    )
    _reg(_F("scaled_dot_product_attention") + _aten("scaled_dot_product_attention"), _sdpa)
    _reg(_F("grid_sample") + _aten("grid_sampler", "grid_sampler_2d", "grid_sampler_3d"), _grid_sample)
    _reg(["masked_fill", "masked_fill_"] + _torch("masked_fill") + _aten("masked_fill"), _masked_fill)
    _reg(["norm"] + _torch("norm") + [torch.linalg.vector_norm] + _aten("linalg_vector_norm"), _norm)
    _reg(
        ["new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"]
        + _aten("new_zeros", "new_ones", "new_full", "new_empty"),
        _new_tensor,
    )
    _reg(["index_select"] + _torch("index_select") + _aten("index_select"), _index_select)
    _reg([getattr], _getattr)
    _reg(
        ["size", "dim", "numel", "item", "tolist", "ndimension", "nelement", "data_ptr", "is_contiguous"],
        _no_tensor_output,
    )


_register_builtin()
