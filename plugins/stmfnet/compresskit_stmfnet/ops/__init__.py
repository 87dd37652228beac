"""Custom ops of ST-MFNet: the PWC-Net correlation cost volume and (softmax) summation splatting.

Importing this package defines the ``torch.library`` ops; :func:`register_rules` (called by the plugin's
``register()`` hook) gives them their channel rules."""

from compresskit_stmfnet.ops import correlation as _correlation
from compresskit_stmfnet.ops import softsplat as _softsplat
from compresskit_stmfnet.ops.correlation import correlation
from compresskit_stmfnet.ops.softsplat import softmax_splat, sum_splat

__all__ = ["correlation", "sum_splat", "softmax_splat", "register_rules", "register_onnx"]


def register_rules() -> None:
    """Channel rules of the correlation and splatting ops."""
    _correlation.register_rules()
    _softsplat.register_rules()


def register_onnx() -> None:
    """ONNX export writes splatting as scatter-adds and correlation as shifted products (``ops.onnx``)."""
    import torch

    from compresskit.deploy.onnx import register_onnx_decomposition
    from compresskit_stmfnet.ops.onnx import correlation_decomposed, sum_splat_decomposed

    register_onnx_decomposition(torch.ops.compresskit_stmfnet.sum_splat, sum_splat_decomposed)
    register_onnx_decomposition(torch.ops.compresskit_stmfnet.correlation, correlation_decomposed)
