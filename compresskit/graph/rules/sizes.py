"""Sizes the forward computes from shapes (``t.shape[1]``, ``x.size(1) - k``): :class:`SizeExpr` says what
such a size counts after shrinking, :func:`require_segments` records that pieces of a channel space
(a split's parts, a slice's bounds) must stay counted by them. Ops that return no tensor (``size``,
``numel``) or read only dtype and device (``new_zeros``) live here too.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compresskit.graph.rules.context import RuleContext, TensorInfo
from compresskit.graph.rules.table import aten_ops, register_rule

__all__ = ["SizeExpr", "size_expr", "size_source", "require_segments", "boundary_requirement", "format_size"]


def size_source(node: Any, builder: Any) -> tuple[Any, int | list[int]] | None:
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
        inner = size_source(node.args[0], builder)
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
    source = size_source(node, ctx.builder)
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


def format_size(raw: Any, value: Any) -> str:
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


def boundary_requirement(
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


def _new_tensor(ctx: RuleContext) -> Any:
    """``x.new_zeros(shape)`` and friends read only ``x``'s dtype and device."""
    return ctx.untracked()


register_rule(
    ["new_zeros", "new_ones", "new_full", "new_empty", "new_tensor",
     *aten_ops("new_zeros", "new_ones", "new_full", "new_empty")],
    _new_tensor,
)


def _no_tensor_output(ctx: RuleContext) -> Any:
    return ctx.out


register_rule(
    ["size", "dim", "numel", "item", "tolist", "ndimension", "nelement", "data_ptr", "is_contiguous"],
    _no_tensor_output,
)

