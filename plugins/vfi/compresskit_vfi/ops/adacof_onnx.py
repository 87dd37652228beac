"""The AdaCoF op in standard torch ops (gathers and arithmetic), for ONNX export.

Same formula and conventions as ``adacof_cpu`` (Lee et al., CVPR 2020; the published kernel's)::

    out[b,c,i,j] = Σ_{k,l<F} W[b,kF+l,i,j] · S(x[b,c], i + k·d + α[b,kF+l,i,j], j + l·d + β[b,kF+l,i,j])

with the integer part of each offset truncated toward zero, the fraction ``offset − trunc(offset)`` and
each of the four tap coordinates clamped to the padded image. One tap at a time: its four corners are
gathered from the flattened image (ONNX ``GatherElements``) for every channel at once, so the memory is
that of a few images, never (B, C, F², H, W). The F² taps are unrolled (25 for F = 5, 121 for F = 11).
Registered with ``compresskit.deploy.register_onnx_decomposition`` by the plugin; the CPU and CUDA kernels
stay the fast path everywhere else.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adacof_decomposed"]


def adacof_decomposed(x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int) -> Tensor:
    """``compresskit_vfi::adacof`` as gathers: x (B, C, Hp, Wp) padded, weight/alpha/beta (B, F², H, W)."""
    b, c, hp, wp = x.shape
    taps, h, w = weight.shape[1], weight.shape[2], weight.shape[3]
    f = int(round(int(taps) ** 0.5))
    table = x.permute(0, 2, 3, 1).reshape(b * hp * wp, c)  # channels-last rows: one gather per tap corner
    base = (torch.arange(b, device=x.device) * (hp * wp)).view(b, 1, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    l_off = (torch.arange(f, device=x.device) * dilation).view(1, f, 1, 1)
    out = None
    for k in range(f):  # one row of F taps per step: (B, F, H, W) coordinates, 4F gathered corners
        sl = slice(k * f, (k + 1) * f)
        a = alpha[:, sl].clamp(-(hp + 1), hp + 1)  # beyond the image only the border is read
        be = beta[:, sl].clamp(-(wp + 1), wp + 1)
        ia, ib = a.to(torch.int64), be.to(torch.int64)  # the C cast: truncation toward zero
        fa, fb = a - ia.to(a.dtype), be - ib.to(be.dtype)
        y0 = ia + rows + k * dilation
        x0 = ib + cols + l_off
        y1 = (y0 + 1).clamp(0, hp - 1) * wp + base
        y0 = y0.clamp(0, hp - 1) * wp + base
        x1 = (x0 + 1).clamp(0, wp - 1)
        x0 = x0.clamp(0, wp - 1)
        index = torch.stack([y0 + x0, y1 + x0, y0 + x1, y1 + x1], -1)  # (B, F, H, W, 4)
        wt = weight[:, sl]
        wa = wt * fa
        w1a = wt - wa
        coef = torch.stack([w1a * (1 - fb), wa * (1 - fb), w1a * fb, wa * fb], -1)
        index = index.permute(0, 2, 3, 1, 4).reshape(b, h, w, 4 * f)
        coef = coef.permute(0, 2, 3, 1, 4).reshape(b, h, w, 4 * f, 1)
        term = (table[index] * coef).sum(3)  # (B, H, W, C)
        out = term if out is None else out + term
    assert out is not None
    return out.permute(0, 3, 1, 2)
