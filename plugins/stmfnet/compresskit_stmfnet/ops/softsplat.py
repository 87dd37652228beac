"""Forward warping by summation splatting, and softmax splatting (Niklaus & Liu, CVPR 2020).

Summation splatting pushes every source pixel to ``(x + F_x, y + F_y)`` and spreads it over the four
surrounding pixels with bilinear weights; corners outside the image are dropped:

    out[b,c,q] = Σ_p x[b,c,p] · k(p + F(p), q),   k = (1 − |Δx|)(1 − |Δy|) for the 4 corners q around p+F(p)

Softmax splatting normalises a splat of ``exp(Z)·I`` by a splat of ``exp(Z)``:

    softsplat(I, F, Z) = Σ→(exp(Z)·I) / Σ→(exp(Z))      (0 where nothing lands)

``compresskit_stmfnet::sum_splat`` is one ``torch.library`` custom op (pure-PyTorch CPU kernel, Triton CUDA
kernel loaded only with CUDA, fake kernel) with true gradients through ``sum_splat_backward``:

    ∂L/∂x[b,c,p]   = Σ_q k(p+F(p), q) · g[b,c,q]
    ∂L/∂F_x[b,p]   = Σ_c x[b,c,p] · Σ_q ∂k/∂F_x · g[b,c,q]     (likewise F_y; k is piecewise bilinear)

Channel rule: the output channels are the input channels (one to one); the 2 flow channels are read by
meaning (x, y) and stay frozen.
"""

from __future__ import annotations

import torch
from compresskit_vfi.ops import triton_available
from torch import Tensor

import compresskit as ck
from compresskit_stmfnet.ops._autograd import register_gradient_op

__all__ = ["sum_splat", "softmax_splat"]


def _check(x: Tensor, flow: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"sum_splat: x must be a (B,C,H,W) tensor, got {getattr(x, 'shape', type(x))}")
    b, _, h, w = x.shape
    if not isinstance(flow, Tensor) or tuple(flow.shape) != (b, 2, h, w):
        raise ValueError(f"sum_splat: flow must have shape (B,2,H,W) = {(b, 2, h, w)}, "
                         f"got {tuple(getattr(flow, 'shape', ()))}")
    if x.dtype != flow.dtype or x.device != flow.device:
        raise ValueError("sum_splat: x and flow must share dtype and device, got "
                         f"{x.dtype}/{x.device} and {flow.dtype}/{flow.device}")


def _corners(flow: Tensor):
    """For each of the 4 corners: flat target index (B,HW), validity (B,HW), weight, ∂w/∂Fx, ∂w/∂Fy."""
    b, _, h, w = flow.shape
    gx = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    gy = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    tx = gx + flow[:, 0]
    ty = gy + flow[:, 1]
    x0 = torch.floor(tx)
    y0 = torch.floor(ty)
    fx = tx - x0
    fy = ty - y0
    x0 = x0.long()
    y0 = y0.long()
    one = torch.ones_like(fx)
    # (ox, oy, weight, d weight / d tx, d weight / d ty)
    spec = [
        (0, 0, (1 - fx) * (1 - fy), -(1 - fy), -(1 - fx)),
        (1, 0, fx * (1 - fy), (1 - fy), -fx),
        (0, 1, (1 - fx) * fy, -fy, (1 - fx)),
        (1, 1, fx * fy, fy * one, fx * one),
    ]
    out = []
    for ox, oy, wgt, dwx, dwy in spec:
        xi = x0 + ox
        yi = y0 + oy
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = torch.where(valid, yi * w + xi, torch.zeros_like(xi)).view(b, h * w)
        v = valid.view(b, h * w).to(flow.dtype)
        out.append((idx, v * wgt.reshape(b, h * w), v * dwx.reshape(b, h * w), v * dwy.reshape(b, h * w)))
    return out


@torch.library.custom_op("compresskit_stmfnet::sum_splat", mutates_args=())
def _sum_splat(x: Tensor, flow: Tensor) -> Tensor:
    b, c, h, w = x.shape
    src = x.reshape(b, c, h * w)
    out = torch.zeros_like(src)
    for idx, wgt, _, _ in _corners(flow):
        out.scatter_add_(2, idx.unsqueeze(1).expand(b, c, h * w), src * wgt.unsqueeze(1))
    return out.view(b, c, h, w)


@_sum_splat.register_fake
def _(x: Tensor, flow: Tensor) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("compresskit_stmfnet::sum_splat_backward", mutates_args=())
def _sum_splat_backward(grad: Tensor, x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    b, c, h, w = x.shape
    g = grad.reshape(b, c, h * w)
    src = x.reshape(b, c, h * w)
    gx = torch.zeros_like(src)
    gfx = torch.zeros(b, h * w, dtype=x.dtype, device=x.device)
    gfy = torch.zeros_like(gfx)
    for idx, wgt, dwx, dwy in _corners(flow):
        at = torch.gather(g, 2, idx.unsqueeze(1).expand(b, c, h * w))  # g at the corner
        gx += wgt.unsqueeze(1) * at
        xs = (src * at).sum(1)
        gfx += dwx * xs
        gfy += dwy * xs
    return gx.view(b, c, h, w), torch.stack([gfx, gfy], 1).view(b, 2, h, w)


@_sum_splat_backward.register_fake
def _(grad: Tensor, x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(x), torch.empty_like(flow)


register_gradient_op(_sum_splat, _sum_splat_backward)


if torch.cuda.is_available() and triton_available():  # pragma: no cover - needs a GPU
    from compresskit_stmfnet.ops import _triton_kernels as _tk

    @_sum_splat.register_kernel("cuda")
    def _(x: Tensor, flow: Tensor) -> Tensor:
        return _tk.sum_splat_forward(x.contiguous(), flow.contiguous())

    @_sum_splat_backward.register_kernel("cuda")
    def _(grad: Tensor, x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
        return _tk.sum_splat_backward(grad.contiguous(), x.contiguous(), flow.contiguous())


def register_rules() -> None:
    """Splatting moves ``x``'s channels to the output; the flow's 2 channels are read by meaning."""
    ck.register_rule(torch.ops.compresskit_stmfnet.sum_splat, passthrough={0: 0},
                     reason="the 2 flow channels are read by meaning (x, y displacement)")


def sum_splat(x: Tensor, flow: Tensor) -> Tensor:
    """Summation splatting of ``x`` (B,C,H,W) along ``flow`` (B,2,H,W; channel 0 horizontal, 1 vertical)."""
    if not isinstance(x, torch.fx.Proxy):  # under symbolic tracing the op node is recorded
        _check(x, flow)
    return _sum_splat(x.contiguous(), flow.contiguous())


def softmax_splat(x: Tensor, flow: Tensor, metric: Tensor) -> Tensor:
    """Softmax splatting: ``Σ→(exp(Z)·x) / Σ→(exp(Z))`` with importance ``metric`` Z (B,1,H,W).

    Both splats are one op call on ``cat(exp(Z)·x, exp(Z))``; pixels nothing lands on are 0."""
    if not isinstance(metric, torch.fx.Proxy) and (
            not isinstance(metric, Tensor) or metric.dim() != 4 or metric.shape[1] != 1 \
            or metric.shape[0] != x.shape[0] or metric.shape[2:] != x.shape[2:]):
        raise ValueError(f"softmax_splat: metric must be (B,1,H,W) matching x {tuple(x.shape)}, "
                         f"got {tuple(getattr(metric, 'shape', ()))}")
    z = torch.exp(metric)
    splat = sum_splat(torch.cat([x * z, z], 1), flow)
    num, den = splat[:, :-1], splat[:, -1:]
    # 0/0 where nothing lands: divide by 1 there (num is 0 too), keeping gradients finite
    return num / torch.where(den == 0, torch.ones_like(den), den)
