"""How much each unit of each prunable channel group matters: the :class:`Importance` protocol.

An importance maps ``(model, graph)`` to ``{group id: float64 tensor of length group.size}``; larger
means keep. The target planner removes the units with the lowest importance per unit of cost, and the
surgery keeps the highest-ranked ones, so one criterion decides both *how many* and *which*.

- :class:`L1Importance` (default): the l1 mass of the unit's slices in every member tensor (rows of the
  producing weights, columns of the consuming ones, biases, norm scales), divided by the group's mean
  unit mass so that groups of different scale compare (an average unit scores 1, a zeroed unit 0).
- :class:`DensityImportance`: the fraction of non-zero entries in the unit's slices (already in [0, 1]);
  l1 mass breaks ties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import nn

from compresskit.shrink.select import unit_l1_mass, unit_sums

if TYPE_CHECKING:  # pragma: no cover
    from compresskit.graph.channels import ChannelGraph, ChannelGroup

__all__ = ["Importance", "L1Importance", "DensityImportance", "get_importance", "keep_from_importance"]


@runtime_checkable
class Importance(Protocol):
    """``importance(model, graph) -> {group id: per-unit scores}`` for every prunable group."""

    name: str

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]: ...


class L1Importance:
    """l1 mass of each unit's slices, normalised by its group's mean unit mass.

    With a ``reference`` model (the original, before sparsification: same module names) the mean is
    the reference's, so a group that sparsification emptied as a whole scores near 0 instead of 1.
    """

    name = "l1"

    def __init__(self, reference: nn.Module | None = None):
        self.reference = reference

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        out = {}
        for group in graph.prunable_groups:
            mass = unit_l1_mass(model, group)
            ref = unit_l1_mass(self.reference, group) if self.reference is not None else mass
            mean = float(ref.mean()) if ref.numel() else 0.0
            out[group.id] = mass / mean if mean > 0 else torch.zeros_like(mass)
        return out


def unit_density(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """float64 tensor of length ``group.size``: non-zeros / entries in each unit's parameter slices."""
    nnz, total = unit_sums(model, group, lambda t: t != 0)
    return torch.where(total > 0, nnz / total.clamp_min(1), torch.zeros_like(nnz))


class DensityImportance:
    """Density of each unit's slices (non-zeros / entries); the normalised l1 mass breaks ties."""

    name = "density"

    def __init__(self, reference: nn.Module | None = None):
        self.reference = reference

    def __call__(self, model: nn.Module, graph: ChannelGraph) -> dict[int, torch.Tensor]:
        l1 = L1Importance(self.reference)(model, graph)
        return {g.id: unit_density(model, g) + 1e-6 * l1[g.id] / (1 + l1[g.id])
                for g in graph.prunable_groups}


_IMPORTANCES = {"l1": L1Importance, "density": DensityImportance}


def get_importance(name: str | Importance, reference: nn.Module | None = None) -> Importance:
    """The importance called ``name`` (``"l1"``, ``"density"``; normalised against ``reference``, the
    unsparsified model), or an Importance object as is."""
    if isinstance(name, str):
        if name not in _IMPORTANCES:
            raise ValueError(f"importance: expected one of {sorted(_IMPORTANCES)}, got {name!r}")
        return _IMPORTANCES[name](reference)
    if not callable(name):
        raise TypeError(f"importance: expected a name or an Importance object, got {type(name).__name__}")
    return name


def removal_order(scores: torch.Tensor) -> torch.Tensor:
    """Unit indices from the first to remove to the last: lowest score first, ties by higher index first
    (so the kept set is the top scores with ties to the lower index, as ``keep_from_plan`` keeps)."""
    keep_first = torch.sort(-scores.to(torch.float64), stable=True).indices
    return keep_first.flip(0)


def keep_from_importance(scores: dict[int, torch.Tensor], widths: dict[int, int],
                         sizes: dict[int, int]) -> dict[int, torch.LongTensor]:
    """``{group id: sorted indices of the widths[id] highest-scoring units}`` for every group that shrinks."""
    keep = {}
    for gid, width in widths.items():
        if width >= sizes[gid]:
            continue
        order = removal_order(scores[gid]).flip(0)  # keep first
        keep[gid] = torch.sort(order[:width]).values
    return keep
