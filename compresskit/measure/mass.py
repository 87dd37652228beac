"""Per-unit masses of a channel group: sums over every parameter entry a unit indexes.

For each unit of a :class:`~compresskit.graph.channels.ChannelGroup`, :func:`unit_sums` adds up a
function of every parameter entry the unit indexes, in every member tensor of the group (rows of the
producing weights, columns of the consuming weights, biases, norm scales, ...). The l1 mass
``Σ |θ|`` (:func:`unit_l1_mass`) is what ``init="inherit"`` ranks units by: after sparsification a unit
whose weights were driven to zero has (nearly) none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGroup

__all__ = ["unit_l1_mass", "unit_sums", "unit_sums_of"]


def unit_sums(model: nn.Module, group: ChannelGroup,
              entry: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ entry(θ), number of entries)`` per unit of ``group``, float64 tensors of length ``group.size``.

    Sums over every entry of the group's parameters that the unit indexes, in every member tensor; buffers
    (running statistics) are not weights and do not count. A member whose length differs from the graph's
    is an error (the model was changed after tracing).
    """
    return unit_sums_of(model, group, lambda param: entry(param.detach()))


def unit_sums_of(model: nn.Module, group: ChannelGroup,
                 values: Callable[[nn.Parameter], torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`unit_sums` of ``values(parameter)``, a tensor of the parameter's shape per entry (None:
    the parameter contributes nothing, e.g. no gradient statistics for it yet)."""
    sums = torch.zeros(group.size, dtype=torch.float64)
    counts = torch.zeros(group.size, dtype=torch.float64)
    seen: set[tuple] = set()
    for member in group.members:
        key = (member.module, member.tensor, member.dim, tuple(member.positions.tolist()))
        if key in seen:  # a tied tensor listed once per role: its entries count once
            continue
        seen.add(key)
        mod = model.get_submodule(member.module) if member.module else model
        tensor = getattr(mod, member.tensor, None)
        if not isinstance(tensor, nn.Parameter):
            continue
        if tensor.shape[member.dim] != member.length:
            raise ValueError(
                f"{member.qualname} has {tensor.shape[member.dim]} positions along dim {member.dim}, the "
                f"graph expects {member.length}: was the model changed after ck.trace?"
            )
        with torch.no_grad():
            t = values(tensor)
            if t is None:
                continue
            t = t.detach().to(torch.float64)
            dims = [d for d in range(t.ndim) if d != member.dim]
            per_position = t.sum(dim=dims) if dims else t  # sum(dim=[]) would sum everything
            per_count = torch.full_like(per_position, float(t.numel() // max(1, t.shape[member.dim])))
            sums.index_add_(0, member.units, per_position[member.positions].cpu())
            counts.index_add_(0, member.units, per_count[member.positions].cpu())
    return sums, counts


def unit_l1_mass(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """float64 tensor of length ``group.size``: the l1 mass ``Σ |θ|`` of each unit over the group's
    parameters (:func:`unit_sums`)."""
    return unit_sums(model, group, torch.abs)[0]
