"""Custom ops of ST-MFNet: the PWC-Net correlation cost volume and (softmax) summation splatting.

Importing this package defines the ``torch.library`` ops; :func:`register_rules` (called by the plugin's
``register()`` hook) gives them their channel rules."""

from compresskit_stmfnet.ops import correlation as _correlation
from compresskit_stmfnet.ops import softsplat as _softsplat
from compresskit_stmfnet.ops.correlation import correlation
from compresskit_stmfnet.ops.softsplat import softmax_splat, sum_splat

__all__ = ["correlation", "sum_splat", "softmax_splat", "register_rules"]


def register_rules() -> None:
    """Channel rules of the correlation and splatting ops."""
    _correlation.register_rules()
    _softsplat.register_rules()
