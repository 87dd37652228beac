"""Tracing a model into a channel-dependency graph (torch.fx) and its channel groups.

``compresskit.trace`` returns a :class:`ChannelGraph`: ``groups`` (:class:`ChannelGroup` with
:class:`Member` s) and ``layers`` (:class:`Layer` s in execution order). ``register_rule`` and
``compresskit.register_leaf`` teach it custom ops; rule functions are written against
:class:`RuleContext` and :class:`TensorInfo`. See ``docs/graph.md``. The tracing function stays in the
submodule ``compresskit.graph.trace`` (not re-exported here, so that name remains the module).
"""

from compresskit.graph.channels import ChannelGraph, ChannelGroup, Layer, Member
from compresskit.graph.rules import ParamRef, RuleContext, TensorInfo, register_rule

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Layer",
    "Member",
    "ParamRef",
    "RuleContext",
    "TensorInfo",
    "register_rule",
]
