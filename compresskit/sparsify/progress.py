"""The sparsify stage's progress field: the mean layer density, supplied by a callback (the trainer knows
nothing of sparsity). ``ck.train(..., callbacks=[DensityProgress()])`` adds it to the progress lines."""

from __future__ import annotations

from typing import Any

from compresskit.training.loop import Callback

__all__ = ["DensityProgress"]


class DensityProgress(Callback):
    """``{"density": mean over layers of nonzeros / size}`` in each progress line (stateless)."""

    def progress_fields(self, trainer: Any) -> dict[str, float]:
        from compresskit.measure.density import layer_densities

        dens = layer_densities(trainer.model)
        return {"density": round(sum(dens.values()) / len(dens), 4)} if dens else {}
