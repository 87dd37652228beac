"""An importance criterion in one file: every unit scores uniformly at random (seeded), the baseline a
criterion must beat. ``fingerprint()`` names the seed, so changing it redoes the stages that used it."""

from __future__ import annotations

import torch
from torch import nn

import compresskit as ck


@ck.register_importance("random")
class RandomImportance:
    """``score(unit) ~ U[0, 1)`` from a generator seeded with ``seed``, group by group in graph order."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fingerprint(self) -> dict:
        return {"name": self.name, "seed": self.seed}

    def __call__(self, model: nn.Module, graph) -> dict[int, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        return {group.id: torch.rand(group.size, generator=generator, dtype=torch.float64)
                for group in graph.prunable_groups}
