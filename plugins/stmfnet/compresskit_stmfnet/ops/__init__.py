"""Custom ops of ST-MFNet: the PWC-Net correlation cost volume and (softmax) summation splatting.

Importing this package registers the ``torch.library`` ops and their channel rules."""

from compresskit_stmfnet.ops.correlation import correlation
from compresskit_stmfnet.ops.softsplat import softmax_splat, sum_splat

__all__ = ["correlation", "sum_splat", "softmax_splat"]
