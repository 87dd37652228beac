"""``shrink(model, graph, keep=... | plan=...)``: exact channel surgery on a deep copy.

For every group in ``keep`` the positions of the dropped units are removed from each member tensor
(weights, biases, running statistics, parameters used directly), and the modules' size attributes
(``in_channels``, ``out_channels``, ``groups``, ``num_features``, ``num_groups``, ``normalized_shape``,
``in_features``...) are updated by each module's resizer (:mod:`compresskit.surgery.resize`; custom layers
add theirs with :func:`compresskit.register_resizer`) so the unchanged forward code runs on the smaller
tensors. The result
keeps the original classes and ``state_dict`` keys. Exactness (the shrunk model equals the original with
the dropped channels zeroed where they are consumed) is checked by
:func:`compresskit.testing.assert_shrink_exact`.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from compresskit.graph.channels import ChannelGraph, Member
from compresskit.surgery.resize import resizer_for

_INITS = ("inherit", "reinit")


def validate_keep(graph: ChannelGraph, keep: Any) -> dict[int, torch.Tensor]:
    """Check a keep-set and return it as ``{group id: sorted LongTensor}``.

    Raises ``TypeError``/``ValueError`` naming the group for: unknown ids, frozen groups, indices that are
    not 1-D integers, empty, out of range, or duplicated.
    """
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep: expected a mapping {{group id: indices}}, got {type(keep).__name__}")
    out: dict[int, torch.Tensor] = {}
    n = len(graph.groups)
    for gid, idx in keep.items():
        if isinstance(gid, bool) or not isinstance(gid, int | np.integer):
            raise TypeError(f"keep: group ids must be ints, got {gid!r}")
        gid = int(gid)
        if not 0 <= gid < n:
            raise KeyError(f"keep: unknown group id {gid} (the graph has groups 0..{n - 1})")
        group = graph.groups[gid]
        if not group.prunable:
            raise ValueError(f"keep: group {gid} is frozen and cannot be shrunk: {'; '.join(group.reasons)}")
        if isinstance(idx, torch.Tensor):
            t = idx.detach().cpu()
        elif isinstance(idx, np.ndarray | list | tuple | range):
            t = torch.as_tensor(np.asarray(list(idx) if isinstance(idx, range) else idx))
        else:
            raise TypeError(
                f"keep[{gid}]: expected a LongTensor/list of unit indices, got {type(idx).__name__}"
            )
        if t.dtype == torch.bool or (t.numel() and t.is_floating_point()) or t.dim() != 1:
            raise TypeError(
                f"keep[{gid}]: expected a 1-D tensor of integer indices, got {t.dtype} {tuple(t.shape)}"
            )
        t = t.long()
        if t.numel() == 0:
            raise ValueError(
                f"keep[{gid}]: empty keep-set (a group must keep at least one of {group.size} units)"
            )
        if int(t.min()) < 0 or int(t.max()) >= group.size:
            raise ValueError(
                f"keep[{gid}]: indices must lie in [0, {group.size}), "
                f"got min {int(t.min())} max {int(t.max())}"
            )
        if torch.unique(t).numel() != t.numel():
            raise ValueError(f"keep[{gid}]: duplicate indices")
        out[gid] = torch.sort(t).values
    return out


def _check_graph_matches(model: nn.Module, graph: ChannelGraph, gids: list[int]) -> None:
    modules = dict(model.named_modules())
    for gid in gids:
        for m in graph.groups[gid].members:
            mod = modules.get(m.module)
            t = getattr(mod, m.tensor, None) if mod is not None else None
            if not isinstance(t, torch.Tensor) or t.dim() <= m.dim or t.shape[m.dim] != m.length:
                raise ValueError(
                    f"graph: {m.qualname} dim {m.dim} of size {m.length} is not in this model; "
                    "was the graph traced from another model (or the model changed since)?"
                )


def dropped_positions(
    graph: ChannelGraph, keep: dict[int, torch.Tensor]
) -> dict[tuple[str, str, int], set[int]]:
    """``{(module, tensor, dim): positions to remove}`` for a validated keep-set."""
    drops: dict[tuple[str, str, int], set[int]] = defaultdict(set)
    for gid, kept in keep.items():
        group = graph.groups[gid]
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[kept] = True
        for m in group.members:
            gone = m.positions[~mask[m.units]]
            if gone.numel():
                drops[(m.module, m.tensor, m.dim)].update(gone.tolist())
    return drops


def consumed_members(graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> list[tuple[Member, torch.Tensor]]:
    """Members with role ``"in"`` and the positions of dropped units in them (what the reference zeroes)."""
    out = []
    for gid, kept in keep.items():
        group = graph.groups[gid]
        mask = torch.zeros(group.size, dtype=torch.bool)
        mask[kept] = True
        for m in group.members:
            if m.role == "in":
                out.append((m, m.positions[~mask[m.units]]))
    return out


def shrink(
    model: nn.Module,
    graph: ChannelGraph,
    keep: Mapping[int, Any] | None = None,
    plan: Any = None,
    init: str = "inherit",
) -> nn.Module:
    """A smaller deep copy of ``model``: the channels of each group not in ``keep`` are removed.

    ``keep``: ``{group id: indices of units to keep}`` (see ``graph.groups[i].size``). Or ``plan``: a
    ``WidthPlan`` from :func:`compresskit.plan_widths`; the channels with the largest l1 mass are kept
    (``compresskit.surgery.select.keep_from_plan``). ``init="reinit"`` re-initialises every module of the
    small model with its ``reset_parameters()`` (train from scratch, as the papers do);
    ``"inherit"`` keeps the surviving weights. The original model is never modified.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(graph, ChannelGraph):
        raise TypeError(f"graph: expected a ChannelGraph from compresskit.trace, got {type(graph).__name__}")
    if init not in _INITS:
        raise ValueError(f"init: expected one of {_INITS}, got {init!r}")
    if (keep is None) == (plan is None):
        raise ValueError("shrink: give exactly one of keep= (explicit channels) or plan= (a WidthPlan)")
    if plan is not None:
        from compresskit.surgery.select import keep_from_plan

        keep = keep_from_plan(model, graph, plan, init)
    keep_t = validate_keep(graph, keep)
    _check_graph_matches(model, graph, list(keep_t))
    drops = dropped_positions(graph, keep_t)
    small = copy.deepcopy(model)
    old_modules = dict(model.named_modules(remove_duplicate=False))  # a module held at two paths: both
    new_modules = dict(small.named_modules(remove_duplicate=False))
    per_tensor: dict[tuple[str, str], dict[int, set[int]]] = defaultdict(dict)
    for (mod, tensor, dim), pos in drops.items():
        per_tensor[(mod, tensor)][dim] = pos
    touched: set[str] = set()
    holders = _holders(small)  # a tied tensor (several modules hold it) stays one tensor
    for (mod_name, tensor), dims in per_tensor.items():
        mod = new_modules[mod_name]
        t = getattr(mod, tensor)
        new = t.detach()
        for dim, pos in dims.items():
            idx = torch.tensor(sorted(set(range(t.shape[dim])) - pos), dtype=torch.long, device=t.device)
            new = new.index_select(dim, idx)
        new = new.clone()
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
        for holder_name, attr in holders.get(id(t), [(mod_name, tensor)]):
            holder = new_modules[holder_name]
            if attr in holder._parameters:
                holder._parameters[attr] = new
            elif attr in holder._buffers:
                holder._buffers[attr] = new
            else:
                setattr(holder, attr, new)
            touched.add(holder_name)
    for name in touched:
        _fix_attributes(new_modules[name], old_modules[name])
    if init == "reinit":
        for m in small.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return small


def _holders(model: nn.Module) -> dict[int, list[tuple[str, str]]]:
    """``{id(tensor): [(module, name), ...]}`` for the parameters and buffers of ``model``, every holder of
    a shared tensor listed."""
    out: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for store in (mod._parameters, mod._buffers):
            for attr, t in store.items():
                if t is not None and (mod_name, attr) not in out[id(t)]:
                    out[id(t)].append((mod_name, attr))
    return out


def _fix_attributes(new: nn.Module, old: nn.Module) -> None:
    """Make a module's size attributes agree with its (smaller) tensors, by its registered resizer
    (:func:`compresskit.register_resizer`; modules without one have no size attributes to update)."""
    resize = resizer_for(new)
    if resize is not None:
        resize(new, old)
