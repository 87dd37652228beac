"""What rules see: :class:`TensorInfo` (a tensor's shape and tracked channel dim), :class:`ParamRef` (a
parameter used directly in the forward) and :class:`RuleContext` (a node's arguments and the graph's
records). :func:`flatten_infos` lists the tensors inside nested arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.build import GraphBuilder
    from compresskit.graph.rules.sizes import SizeExpr

__all__ = ["ParamRef", "TensorInfo", "RuleContext", "RuleFn", "flatten_infos", "BROADCAST", "MISSING"]

RuleFn = Callable[["RuleContext"], Any]

#: marks an argument that the node does not have
MISSING = object()


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
        """``module.tensor``, the parameter's name in ``state_dict``."""
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
        """Number of dimensions."""
        return len(self.shape)

    @property
    def tracked(self) -> bool:
        """True when one dimension carries a tracked channel space."""
        return self.cdim is not None

    def ids_at(self, dim: int) -> np.ndarray | None:
        """The element ids if ``dim`` is the tracked channel dim, else ``None``."""
        if self.cdim is None:
            return None
        return self.ids if dim % max(1, self.ndim) == self.cdim else None

    def __repr__(self) -> str:
        extra = f", param={self.param.qualname}" if self.param else ""
        return f"TensorInfo(shape={self.shape}, cdim={self.cdim}{extra})"


def flatten_infos(x: Any) -> list[TensorInfo]:
    """Every :class:`TensorInfo` inside ``x`` (nested lists, tuples, dicts and slices), in order."""
    if isinstance(x, TensorInfo):
        return [x]
    if isinstance(x, list | tuple):
        return [t for item in x for t in flatten_infos(item)]
    if isinstance(x, dict):
        return [t for item in x.values() for t in flatten_infos(item)]
    if isinstance(x, slice):
        return flatten_infos([x.start, x.stop, x.step])
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
        """``node``: the fx node the rule describes; ``module`` / ``module_name``: the module it calls."""
        self.builder = builder
        self.node = node
        self.module = module
        self.module_name = module_name
        self.out = builder.meta[node]

    # -- arguments -----------------------------------------------------------------------------------
    def _raw(self, i: int, name: str | None) -> Any:
        """Argument ``i`` (or keyword ``name``) unresolved, or :data:`MISSING`."""
        args, kwargs = self.node.args, self.node.kwargs
        if i is not None and 0 <= i < len(args):
            return args[i]
        if name is not None and name in kwargs:
            return kwargs[name]
        return MISSING

    def arg(self, i: int, name: str | None = None, default: Any = None) -> Any:
        """Argument ``i`` (or keyword ``name``), tensors as :class:`TensorInfo`; ``default`` if absent."""
        raw = self._raw(i, name)
        if raw is MISSING:
            return default
        return self.builder.resolve(raw)

    def has_arg(self, i: int, name: str | None = None) -> bool:
        """True when the node passes argument ``i`` (or keyword ``name``)."""
        return self._raw(i, name) is not MISSING

    def is_literal(self, i: int, name: str | None = None) -> bool:
        """True when the argument holds no graph value (written as a constant in the source)."""
        raw = self._raw(i, name)
        return raw is MISSING or not _contains_node(raw)

    def raw_arg(self, i: int, name: str | None = None) -> Any:
        """Argument ``i`` (or ``name``) as fx wrote it (``Node`` s unresolved), ``None`` if absent."""
        raw = self._raw(i, name)
        return None if raw is MISSING else raw

    def tensor_args(self) -> list[TensorInfo]:
        """Every tensor among the positional and keyword arguments."""
        return flatten_infos([self.builder.resolve(a) for a in self.node.args]) + flatten_infos(
            [self.builder.resolve(a) for a in self.node.kwargs.values()]
        )

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output's shape (``TypeError`` if the node returns no single tensor)."""
        if not isinstance(self.out, TensorInfo):
            raise TypeError(f"{self.describe()} does not return a single tensor")
        return self.out.shape

    def describe(self) -> str:
        """The node as error and freeze messages name it (module path, op)."""
        return self.builder.describe(self.node)

    # -- records -------------------------------------------------------------------------------------
    def fresh(self, n: int) -> np.ndarray:
        """``n`` new channel element ids (a new channel space)."""
        return self.builder.fresh(n)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join ``a[i]`` with ``b[i]`` for every ``i``: they are kept or dropped together."""
        self.builder.uf.union_arrays(np.asarray(a), np.asarray(b))

    def freeze(self, what: TensorInfo | np.ndarray | None, reason: str) -> None:
        """These channels (ids, or a tensor's tracked ids) can never be dropped; ``reason`` is reported."""
        if isinstance(what, TensorInfo):
            what = what.ids
        if what is None or len(what) == 0:
            return
        self.builder.freeze(np.asarray(what), f"{self.describe()}: {reason}")

    def freeze_all_inputs(self, reason: str) -> None:
        """Freeze every tracked tensor argument's channels, and every dimension of a parameter used
        directly (``F.linear(z, self.enc.weight.t())``: an op that reads a weight in an unknown way)."""
        for t in self.tensor_args():
            if t.tracked:
                self.freeze(t.ids, reason)
            if t.param is not None:
                for pdim in t.param.dims:
                    if pdim is not None:
                        ids = self.weight_ids(t.param.module, t.param.tensor, pdim, "param")
                        self.freeze(ids, reason)

    def require_count(self, lhs: np.ndarray, expr: SizeExpr, reason: str) -> None:
        """After shrinking, ``expr`` (a size the forward computes) must count the kept channels of ``lhs``;
        checked once the graph is complete, else the groups are frozen with ``reason``."""
        self.builder.require_count(lhs, expr.pos, expr.neg, expr.const, f"{self.describe()}: {reason}")

    def weight_ids(self, module: str, tensor: str, dim: int, role: str) -> np.ndarray:
        """The ids of dimension ``dim`` of ``module.tensor``: fresh the first time, the same ids when the
        module is called again; ``role`` is ``"out"``, ``"in"`` or ``"param"``."""
        return self.builder.weight_ids(module, tensor, dim, role, self._module_type(module))

    def member(self, module: str, tensor: str, dim: int, ids: np.ndarray, role: str) -> None:
        """Tie dimension ``dim`` of ``module.tensor`` to existing ``ids`` (surgery cuts it with them)."""
        self.builder.member(module, tensor, dim, np.asarray(ids), role, self._module_type(module))

    def _module_type(self, module: str) -> str:
        return self.builder.module_type(module)

    def param_shape(self, ref: ParamRef) -> tuple[int, ...]:
        """The shape of a parameter used directly."""
        return self.builder.param_shape(ref.module, ref.tensor)

    def bind(self, info: Any, dim: int, ids: np.ndarray) -> None:
        """Operand ``info`` must stay aligned with ``ids`` along its dimension ``dim``."""
        if not isinstance(info, TensorInfo):
            return
        dim = dim % info.ndim
        if info.shape[dim] == 1 and len(ids) != 1:
            if info.cdim == dim:
                self.freeze(info.ids, BROADCAST.format(n=len(ids)))
            return  # broadcast
        if info.cdim == dim:
            self.union(info.ids, ids)
        elif info.param is not None and info.param.dims[dim] is not None:
            self.member(info.param.module, info.param.tensor, info.param.dims[dim], ids, "param")
        else:
            self.freeze(ids, f"meets a tensor whose dim {dim} is not a tracked channel space")

    # -- outputs -------------------------------------------------------------------------------------
    def tracked(self, cdim: int, ids: np.ndarray, shape: tuple[int, ...] | None = None) -> TensorInfo:
        """An output info whose dim ``cdim`` carries ``ids`` (``shape``: the node's output shape if None)."""
        shape = tuple(self.out_shape if shape is None else shape)
        cdim = cdim % len(shape)
        if shape[cdim] != len(ids):
            raise RuntimeError(
                f"rule for {self.describe()} gave {len(ids)} ids for a dim of size {shape[cdim]}"
            )
        return TensorInfo(shape, cdim, np.asarray(ids))

    def untracked(self, shape: tuple[int, ...] | None = None) -> TensorInfo:
        """An output info with no tracked channels."""
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


BROADCAST = (
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

