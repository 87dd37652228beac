"""``ck.Target``: what a compression aims at ("4x params", "50% macs", "2x latency", several at once).

Public path of :mod:`compresskit.plan.target`, where the target lives beside the planner that reads it.
"""

from compresskit.plan.target import DEFAULT_TARGET, METRICS, Target, as_target

__all__ = ["Target", "DEFAULT_TARGET", "METRICS", "as_target"]
