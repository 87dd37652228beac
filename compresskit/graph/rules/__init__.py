"""How each op moves channels, and :func:`register_rule` for custom ops and modules.

Every tensor in a traced graph is described to the rules by a :class:`TensorInfo`: its ``shape``, the
dimension ``cdim`` that carries a tracked channel space (or ``None``) and ``ids``, one channel element id
per position along ``cdim``. A rule looks at its inputs' infos and

* returns the output's info (the same structure as the op's output: a ``TensorInfo`` per tensor, tuples
  for tuples),
* joins channel spaces that must stay aligned (``ctx.union``: ``a + b`` joins ``a``'s and ``b``'s),
* records which module tensors are indexed by which elements (``ctx.member`` / ``ctx.weight_ids``),
* freezes channels it reads *by meaning* (``ctx.freeze``: a softmax over channels, the 2 channels of a
  flow field, the F² taps of an adaptive-kernel op).

**Unknown means frozen**: an op with no rule freezes every channel space it touches and its outputs are
untracked, so nothing around it is ever shrunk.

Writing a rule for a custom op (the declarative form covers most plugins)::

    import compresskit as ck

    # output 0 carries input 0's channels (per-channel sampling); all other tensor inputs (weights,
    # offsets, flows) are read by meaning and therefore frozen, and so is any other output
    ck.register_rule(torch.ops.mylib.adacof, passthrough={0: 0}, reason="kernel taps are read by meaning")

    # a function that cannot be traced into: make it a leaf first, then describe it
    ck.register_leaf(my_warp)
    ck.register_rule(my_warp, passthrough={0: 0})

    # full control: a function of a RuleContext
    @ck.register_rule(MyAttention)
    def _my_attention(ctx):
        x = ctx.arg(0)                      # TensorInfo of the first argument
        ctx.freeze(x.ids, "MyAttention mixes channels")
        return ctx.untracked()

``passthrough`` maps *tensor argument index → output index* (use an int for ``{i: 0}``, a list of pairs,
or a dict); several inputs passing to the same output are joined (an element-wise custom op). Output
channel dims must have the input's size. Tensor arguments not listed are frozen with ``reason``.
Targets: an ``nn.Module`` subclass (it also becomes a tracing leaf), a function (register it with
``register_leaf`` too when fx must not trace into it), a ``torch.library`` op (``OpOverloadPacket`` or
``OpOverload``), a custom ``torch.autograd.Function`` subclass (or its ``.apply``; tracing never enters
it), or a method name string such as ``"view"``. A target that already has a rule needs
``replace=True``.

The built-in rules, one module per op family (each registers its rules next to their definitions):

* :mod:`~compresskit.graph.rules.context`: ``TensorInfo``, ``ParamRef``, ``RuleContext``
* :mod:`~compresskit.graph.rules.table`: ``register_rule``, ``lookup_rule``, the ``RULES`` registry
* :mod:`~compresskit.graph.rules.elementwise`: activations, arithmetic, comparisons, where, masked_fill
* :mod:`~compresskit.graph.rules.layers`: conv, linear, norms, PReLU, embedding, attention modules
* :mod:`~compresskit.graph.rules.sizes`: sizes computed from shapes (``SizeExpr``), segments
* :mod:`~compresskit.graph.rules.layout`: view, permute, cat, split, index, pad
* :mod:`~compresskit.graph.rules.spatial`: pooling, interpolation, pixel shuffle
* :mod:`~compresskit.graph.rules.reductions`: mean, sum, max, var, softmax, norms
* :mod:`~compresskit.graph.rules.attention`: matmul, scaled dot-product attention, grid_sample
"""

from __future__ import annotations

# the built-in rules, registered on import (no two families share a target, so the order is free)
from compresskit.graph.rules import (  # noqa: E402,F401
    attention,
    elementwise,
    layers,
    layout,
    reductions,
    sizes,
    spatial,
)
from compresskit.graph.rules.context import (
    BROADCAST,
    MISSING,
    ParamRef,
    RuleContext,
    RuleFn,
    TensorInfo,
    flatten_infos,
)
from compresskit.graph.rules.layers import (  # noqa: E402
    conv_core,
    groupnorm_core,
    layernorm_core,
    linear_core,
    per_channel_core,
)
from compresskit.graph.rules.layout import index_core, reshape_core  # noqa: E402
from compresskit.graph.rules.sizes import SizeExpr, require_segments, size_expr  # noqa: E402
from compresskit.graph.rules.table import (
    RULES,
    has_module_rule,
    lookup_rule,
    passthrough_rule,
    register_rule,
)

__all__ = [
    "BROADCAST",
    "MISSING",
    "RULES",
    "ParamRef",
    "RuleContext",
    "RuleFn",
    "SizeExpr",
    "TensorInfo",
    "conv_core",
    "flatten_infos",
    "groupnorm_core",
    "has_module_rule",
    "index_core",
    "layernorm_core",
    "linear_core",
    "lookup_rule",
    "passthrough_rule",
    "per_channel_core",
    "register_rule",
    "require_segments",
    "reshape_core",
    "size_expr",
]
