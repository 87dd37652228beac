"""ST-MFNet's custom ops in standard torch ops, for ONNX export.

- ``sum_splat`` (Niklaus & Liu, CVPR 2020): each source pixel is added to the four pixels around
  ``p + F(p)`` with bilinear weights, corners outside the image dropped — four ``scatter_add`` calls
  (ONNX ``ScatterElements`` with ``reduction="add"``, opset ≥ 16)::

      out[b,c,q] = Σ_p x[b,c,p] · k(p + F(p), q)

- ``correlation`` (PWC-Net, Sun et al., CVPR 2018): the 81 displacements as shifted products of the
  zero-padded second map, averaged over channels, stacked::

      out[b, (dy+4)·9 + (dx+4), y, x] = (1/C) Σ_c f1[b,c,y,x] · f2[b,c,y+dy,x+dx]

Both compute what the ops' CPU kernels compute, without in-place writes. Registered with
``compresskit.deploy.register_onnx_decomposition`` by the plugin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from compresskit_stmfnet.ops.correlation import MAX_DISPLACEMENT

__all__ = ["sum_splat_decomposed", "correlation_decomposed"]


def sum_splat_decomposed(x: Tensor, flow: Tensor) -> Tensor:
    """``compresskit_stmfnet::sum_splat`` as four scatter-adds: x (B,C,H,W), flow (B,2,H,W)."""
    b, c, h, w = x.shape
    gx = torch.arange(w, device=x.device, dtype=flow.dtype).view(1, 1, w)
    gy = torch.arange(h, device=x.device, dtype=flow.dtype).view(1, h, 1)
    tx = gx + flow[:, 0]
    ty = gy + flow[:, 1]
    fx0 = torch.floor(tx)
    fy0 = torch.floor(ty)
    fx = tx - fx0
    fy = ty - fy0
    x0 = fx0.to(torch.int64)
    y0 = fy0.to(torch.int64)
    src = x.reshape(b, c, h * w)
    out = torch.zeros_like(src)
    for ox, oy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy),
                        (1, 1, fx * fy)):
        xi = x0 + ox
        yi = y0 + oy
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = torch.where(valid, yi * w + xi, torch.zeros_like(xi)).reshape(b, 1, h * w)
        weight = torch.where(valid, wgt, torch.zeros_like(wgt)).reshape(b, 1, h * w)
        out = out.scatter_add(2, idx.expand(b, c, h * w), src * weight)
    return out.reshape(b, c, h, w)


def correlation_decomposed(f1: Tensor, f2: Tensor) -> Tensor:
    """``compresskit_stmfnet::correlation`` as 81 shifted products: f1, f2 (B,C,H,W) → (B,81,H,W)."""
    c, h, w = f1.shape[1], f1.shape[2], f1.shape[3]
    r = MAX_DISPLACEMENT
    f2p = torch.nn.functional.pad(f2, (r, r, r, r))
    planes = [(f1 * f2p[:, :, r + dy: r + dy + h, r + dx: r + dx + w]).sum(1)
              for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    return torch.stack(planes, 1) / c
