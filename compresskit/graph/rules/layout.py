"""Shape and layout ops: view / reshape / flatten, permute and transposes, (un)squeeze, expand, repeat,
cat, stack, split / chunk / narrow / unbind, indexing and slicing, pad, flip / roll, index_select, and
attribute access (``.T``, ``.data``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from compresskit.graph.rules.context import BROADCAST, MISSING, RuleContext, TensorInfo
from compresskit.graph.rules.elementwise import elementwise
from compresskit.graph.rules.sizes import (
    boundary_requirement,
    format_size,
    require_segments,
    size_expr,
    size_source,
)
from compresskit.graph.rules.spatial import spatial_dims
from compresskit.graph.rules.table import aten_ops, functional, nn_modules, register_rule, torch_fns

__all__ = ["reshape_core", "index_core"]


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
    whole = size_source(raw[0], ctx.builder) if len(raw) == 1 else None
    if whole is not None and isinstance(whole[1], list) and len(whole[1]) == len(ctx.out_shape):
        sources = [(d, (whole[0], k)) for d, k in enumerate(whole[1])]
    else:
        sources = [(d, size_source(r, ctx.builder)) for d, r in enumerate(raw)] if flags is not None else []
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


register_rule(["view", "reshape", *torch_fns("reshape"), *aten_ops("view", "reshape", "_unsafe_view")], _view)


def _view_as(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


register_rule(["view_as", "reshape_as"], _view_as)


def _flatten(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


register_rule(["flatten", *torch_fns("flatten"), *aten_ops("flatten")], _flatten)


def _flatten_module(ctx: RuleContext) -> Any:
    return reshape_core(ctx, ctx.arg(0, "input"), ctx.out_shape, None)


register_rule(nn_modules("Flatten"), _flatten_module)


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


register_rule(["unflatten", *torch_fns("unflatten"), *aten_ops("unflatten")], _unflatten)


def _unflatten_module(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    m = ctx.module
    dim = m.dim % (len(ctx.out_shape) - len(m.unflattened_size) + 1)
    flags = [False] * len(ctx.out_shape)
    for k, s in enumerate(m.unflattened_size):
        flags[dim + k] = s != -1
    return reshape_core(ctx, x, ctx.out_shape, flags)


register_rule(nn_modules("Unflatten"), _unflatten_module)


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


register_rule(["permute", *torch_fns("permute"), *aten_ops("permute")], _permute)


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


register_rule(
    ["transpose", "swapaxes", "swapdims", "t", *torch_fns("transpose", "swapaxes", "swapdims", "t"),
     *aten_ops("transpose", "t")],
    _transpose,
)


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


register_rule(["movedim", "moveaxis", *torch_fns("movedim", "moveaxis"), *aten_ops("movedim")], _movedim)


def _unsqueeze(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    d = ctx.arg(1, "dim") % (x.ndim + 1)
    perm: list[int | None] = list(range(x.ndim))
    perm.insert(d, None)
    return _insert_dims(x, perm, ctx.out_shape)


register_rule(["unsqueeze", *torch_fns("unsqueeze"), *aten_ops("unsqueeze")], _unsqueeze)


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


register_rule(["squeeze", *torch_fns("squeeze"), *aten_ops("squeeze")], _squeeze)


def _expand(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    out = ctx.out_shape
    lead = len(out) - x.ndim
    src = [None] * lead + list(range(x.ndim))
    if x.tracked and out[x.cdim + lead] != len(x.ids):
        c = x.cdim + lead
        ctx.freeze(x.ids, BROADCAST.format(n=out[c]) + " (expand)")
        # the copies follow the tensor whose channel count sizes them: expand_as(t), expand(t.shape[1])
        if ctx.node.target == "expand_as":
            sizer = ctx.arg(1, "other")
            sized = (sizer, c) if isinstance(sizer, TensorInfo) else None
        else:
            raw = _dims_arg(ctx, 1, "size")
            src = size_source(raw[c], ctx.builder) if len(raw) == len(out) else None
            sized = (
                (ctx.builder.resolve(src[0]), src[1]) if src is not None and isinstance(src[1], int) else None
            )
        if sized is not None:
            t, k = sized
            if isinstance(t, TensorInfo) and t.tracked and k % t.ndim == t.cdim and len(t.ids) == out[c]:
                return ctx.tracked(c, t.ids)
        return ctx.untracked()
    return _insert_dims(x, src, out)


register_rule(["expand", "expand_as", *aten_ops("expand")], _expand)


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


register_rule(["repeat", *aten_ops("repeat")], _repeat)


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


register_rule(torch_fns("cat", "concat", "concatenate") + aten_ops("cat", "concat"), _cat)


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


register_rule(torch_fns("stack") + aten_ops("stack"), _stack)


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


register_rule(["chunk", *torch_fns("chunk"), *aten_ops("chunk")], _chunk)


def _split(ctx: RuleContext) -> Any:
    """``split(x, size)``: equal parts as :func:`_chunk`; ``split(x, [sizes])`` / ``split_with_sizes``:
    each part takes its segment of the channels (:func:`require_segments`)."""
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return None
    dim = ctx.arg(2, "dim", 0) % x.ndim
    sizes = [o.shape[dim] for o in ctx.out]
    names = ("split_size_or_sections", "split_size", "split_sizes")
    size_arg = next((ctx.raw_arg(1, name) for name in names if ctx.has_arg(1, name)), MISSING)
    from torch.fx import Node

    if isinstance(size_arg, list | tuple) and x.tracked and x.cdim == dim and sum(sizes) == x.shape[dim]:
        return _split_sections(ctx, x, dim, sizes, list(size_arg))
    follows = isinstance(size_arg, Node) and ctx.builder.method == "fx" and sum(sizes) == x.shape[dim]
    return _split_like(ctx, x, dim, sizes, follows)


def _split_sections(ctx: RuleContext, x: TensorInfo, dim: int, sizes: list[int], raw: list[Any]) -> Any:
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    pieces = [x.ids[starts[k] : starts[k + 1]] for k in range(len(sizes))]
    shown = ", ".join(format_size(r, v) for r, v in zip(raw, sizes))
    reqs = [
        (piece, size_expr(ctx, r), f"split part {k} (channels {starts[k]}:{starts[k + 1]})")
        for k, (piece, r) in enumerate(zip(pieces, raw))
    ]
    require_segments(ctx, x, reqs, f"split along the channels with hard-coded split sizes [{shown}]")
    return type(ctx.out)(TensorInfo(o.shape, dim, p) for o, p in zip(ctx.out, pieces))


register_rule(
    ["split", "split_with_sizes", *torch_fns("split", "split_with_sizes"),
     *aten_ops("split", "split_with_sizes")],
    _split,
)


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
    bound = boundary_requirement(ctx, x.ids, ctx.raw_arg(2, "start"), start)
    reqs = [] if bound is None else [(*bound, f"narrow start {start}")]
    reqs.append(
        (
            x.ids[first : first + length],
            size_expr(ctx, ctx.raw_arg(3, "length")),
            f"narrow {first}:{first + length}",
        )
    )
    shown = f"{format_size(ctx.raw_arg(2, 'start'), start)}, {format_size(ctx.raw_arg(3, 'length'), length)}"
    what = f"narrow picks channels by position with hard-coded start, length ({shown})"
    require_segments(ctx, x, reqs, what)
    return ctx.tracked(dim, x.ids[first : first + length])


register_rule(["narrow", *torch_fns("narrow"), *aten_ops("narrow")], _narrow)


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


register_rule(["unbind", *torch_fns("unbind"), *aten_ops("unbind")], _unbind)


def _getitem(ctx: RuleContext) -> Any:
    obj = ctx.arg(0)
    idx = ctx.arg(1)
    if not isinstance(obj, TensorInfo):
        if isinstance(obj, list | tuple | dict) and not isinstance(idx, TensorInfo):
            return obj[idx]
        return None
    return index_core(ctx, obj, idx, ctx.raw_arg(1))


register_rule(operator.getitem, _getitem)


def _full_slice(s: Any, size: int) -> bool:
    if not isinstance(s, slice):
        return False
    start, stop, step = s.indices(size)
    return start == 0 and stop == size and step == 1


def index_core(ctx: RuleContext, x: TensorInfo, idx: Any, raw_idx: Any = MISSING) -> Any:
    """Basic indexing ``x[...]``: slices, ints, ``None``, ``...``. The channel dim is taken whole, or
    sliced with step 1 into a segment whose bounds follow the shapes (``raw_idx``: the fx argument, to
    tell computed bounds from hard-coded ones; see :func:`require_segments`)."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    raws = list(raw_idx) if isinstance(raw_idx, tuple) else [raw_idx]
    if len(raws) != len(items):
        raws = [MISSING] * len(items)
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
        bound = boundary_requirement(ctx, x.ids, raw_v, value)
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


register_rule(aten_ops("slice"), _slice_aten)


def _select_aten(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    dim = ctx.arg(1, "dim") % x.ndim
    idx = [slice(None)] * x.ndim
    idx[dim] = ctx.arg(2, "index")
    return index_core(ctx, x, tuple(idx))


register_rule(aten_ops("select"), _select_aten)


def _pad(ctx: RuleContext) -> Any:
    x = ctx.arg(0, "input")
    if not isinstance(x, TensorInfo):
        return ctx.untracked()
    pad = ctx.arg(1, "pad")
    if ctx.module is not None:
        pad = list(ctx.module.padding) if isinstance(ctx.module.padding, tuple | list) else None
        if pad is None:
            pad = [ctx.module.padding] * (2 * spatial_dims(ctx.module))
    touched = {x.ndim - 1 - k // 2 for k, p in enumerate(pad or []) if p != 0}
    if x.tracked and x.cdim in touched:
        ctx.freeze(x.ids, "padding along the channel dim")
        return ctx.untracked()
    return ctx.like(x)


register_rule(functional("pad") + aten_ops("pad", "constant_pad_nd", "reflection_pad2d", "replication_pad2d"),
              _pad)
register_rule(
    nn_modules(*(f"{kind}Pad{k}d" for kind in ("Zero", "Constant", "Reflection", "Replication", "Circular")
                 for k in (1, 2, 3))),
    _pad,
)


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


register_rule(["flip", "roll", *torch_fns("flip", "roll"), *aten_ops("flip", "roll")], _flip_roll)


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


register_rule(["index_select", *torch_fns("index_select"), *aten_ops("index_select")], _index_select)


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


register_rule(getattr, _getattr)



def _setitem(ctx: RuleContext) -> Any:
    """``x[idx] = v`` (in place; fx records ``operator.setitem``). Written over the whole channel dim,
    ``v``'s channels (broadcast) are joined with ``x``'s position by position; written into part of the
    channels (``x[:, 2:6] = v``), or by advanced indexing, both sides are frozen: the kept channels of
    ``x`` and ``v`` would no longer line up."""
    x, idx, v = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    if not isinstance(x, TensorInfo):
        return None
    v_tracked = isinstance(v, TensorInfo) and v.tracked
    if not x.tracked:
        if v_tracked:
            ctx.freeze(v, "written in place into a tensor whose channels are not tracked")
        return None
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(i, TensorInfo | list) for i in items):
        ctx.freeze(x, "in-place assignment by advanced indexing")
        ctx.freeze(v if v_tracked else None, "in-place assignment by advanced indexing")
        return None
    n_real = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items = items[:k] + [slice(None)] * (x.ndim - n_real) + items[k + 1:]
    items += [slice(None)] * (x.ndim - sum(1 for i in items if i is not None))
    d, pos, chan_pos, whole = 0, 0, None, True
    for it in items:
        if it is None:
            pos += 1
            continue
        if d == x.cdim:
            if isinstance(it, slice) and _full_slice(it, x.shape[d]):
                chan_pos = pos
            else:
                whole = False
        if isinstance(it, slice):
            pos += 1
        d += 1
    if not whole:
        what = "in-place assignment into part of the channels (x[:, a:b] = v)"
        ctx.freeze(x, what)
        ctx.freeze(v if v_tracked else None, what)
        return None
    if not isinstance(v, TensorInfo):
        return None  # a number written everywhere: channel by channel
    vd = chan_pos - (pos - v.ndim)
    if vd < 0 or v.shape[vd] == 1:  # broadcast over the channels: every channel gets the same values
        if v_tracked:
            ctx.freeze(v, BROADCAST.format(n=len(x.ids)))
        return None
    if v_tracked and v.cdim != vd:
        ctx.freeze(v, f"written in place along dim {vd}, not its channel dim {v.cdim}")
    ctx.bind(v, vd, x.ids)
    return None


register_rule(operator.setitem, _setitem)
