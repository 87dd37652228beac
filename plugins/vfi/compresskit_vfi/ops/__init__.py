"""Custom ops of the VFI plugins: the AdaCoF sampling operator (``adacof``).

Importing this package defines the ``torch.library`` op; :func:`register_rules` (called by the plugin's
``register()`` hook) gives it its channel rule: the image's channels pass through to the output; the F²
taps of weight/alpha/beta are read by meaning and so frozen (never pruned).
"""

from __future__ import annotations

import torch

import compresskit as ck
from compresskit_vfi.ops.adacof import adacof, adacof_padding, triton_available

__all__ = ["adacof", "adacof_padding", "triton_available", "register_rules", "register_onnx"]

_TAPS_REASON = "AdaCoF op: the F² kernel taps of weight/alpha/beta are read by meaning"


def register_rules() -> None:
    """The Python wrapper ``adacof`` is a tracing leaf; it and the op pass the image's channels through."""
    ck.register_leaf(adacof)
    ck.register_rule(adacof, passthrough={0: 0}, reason=_TAPS_REASON)
    ck.register_rule(torch.ops.compresskit_vfi.adacof, passthrough={0: 0}, reason=_TAPS_REASON)


def register_onnx() -> None:
    """ONNX export writes the op as gathers (``adacof_onnx``): standard ONNX ops, no custom domain."""
    from compresskit.deploy.onnx import register_onnx_decomposition
    from compresskit_vfi.ops.adacof_onnx import adacof_decomposed

    register_onnx_decomposition(torch.ops.compresskit_vfi.adacof, adacof_decomposed)
