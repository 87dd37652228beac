"""Which channels a planned width keeps: the units with the largest l1 mass.

For each group, a unit's mass is ``Σ |θ|`` over every parameter entry that the unit indexes, in every
member tensor of the group (:func:`compresskit.measure.mass.unit_l1_mass`). After OBProx-SG a channel
whose weights were driven to zero has (nearly) no mass, so keeping the ``width`` heaviest units keeps
what the sparse solution kept (``init="inherit"``). With ``init="reinit"`` the same selection is used;
the surgery then re-initialises the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from compresskit.measure.mass import unit_l1_mass

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph
    from compresskit.plan.planner import WidthPlan

__all__ = ["keep_from_plan", "INITS"]

INITS = ("inherit", "reinit")


def keep_from_plan(
    model: nn.Module, graph: ChannelGraph, plan: WidthPlan, init: str = "inherit"
) -> dict[int, torch.LongTensor]:
    """``{group id: sorted LongTensor of the plan.widths[id] units to keep}`` for each group that shrinks.

    Units are ranked by :func:`unit_l1_mass` (ties: the lower index first). Groups whose planned width is
    their size are left out (kept whole). ``init`` is ``"inherit"`` or ``"reinit"`` (same selection).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    plan.check_graph(graph)
    keep: dict[int, torch.LongTensor] = {}
    for gid, width in plan.widths.items():
        group = graph.group(gid)
        if width >= group.size:
            continue
        if not group.prunable:
            raise ValueError(
                f"plan shrinks frozen group {gid} to {width} of {group.size}: {graph.explain(gid)}"
            )
        if width < 1:
            raise ValueError(f"plan.widths[{gid}] must be >= 1, got {width}")
        mass = unit_l1_mass(model, group)
        order = torch.sort(-mass, stable=True).indices  # heaviest first, ties by index
        keep[gid] = torch.sort(order[:width]).values
    return keep
