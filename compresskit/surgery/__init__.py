"""The surgery that emits the smaller dense model (``shrink``), the resizers of unusual modules, which
units a plan keeps, and the removal of parameters forward never reads. Planning is :mod:`compresskit.plan`."""
