"""Moved to :mod:`compresskit.measure.density` (House III). This name stays only while
``compresskit/train/loop.py`` still imports it; house-train's change removes that import, then delete this
file."""

from compresskit.measure.density import LayerDensities, density_table, layer_densities, plot_densities

__all__ = ["layer_densities", "LayerDensities", "density_table", "plot_densities"]
