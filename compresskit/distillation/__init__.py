"""The distillation engine: Distiller, feature pairs and hooks, teacher caching.

The package is ``distillation`` so that no function shadows it: ``compresskit.distill`` is the function
:func:`compresskit.distillation.engine.distill`. Losses by name live in :mod:`compresskit.losses`.
"""
