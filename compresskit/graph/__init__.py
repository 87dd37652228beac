"""Tracing a model into a channel-dependency graph (torch.fx) and its channel groups.

``trace`` → :class:`ChannelGraph` (``groups``: :class:`ChannelGroup` with :class:`Member` s, ``layers``:
:class:`Layer` s in execution order); ``register_rule`` / ``register_leaf`` teach it custom ops, with
rule functions written against :class:`RuleContext` and :class:`TensorInfo`. See ``docs/graph.md``.
"""

from compresskit.graph.channels import ChannelGraph, ChannelGroup, Layer, Member
from compresskit.graph.rules import ParamRef, RuleContext, TensorInfo, register_rule
from compresskit.graph.trace import register_leaf, trace

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "Layer",
    "Member",
    "ParamRef",
    "RuleContext",
    "TensorInfo",
    "register_leaf",
    "register_rule",
    "trace",
]
