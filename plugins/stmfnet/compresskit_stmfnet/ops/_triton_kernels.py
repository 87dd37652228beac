"""Triton CUDA kernels of the correlation and summation-splatting ops (imported only when CUDA is present).

Same formulas as the CPU kernels in ``correlation.py`` and ``softsplat.py``; half precision inputs are
computed in float32 and cast back. Gathers everywhere except the splat forward, which scatters with atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 128


def _compute_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


# ---------------------------------------------------------------------------------------- correlation
@triton.jit
def _corr_fwd_kernel(f1, f2, out, C, H, W, R: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # b * H + y
    b = row // H
    y = row % H
    xs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    xmask = xs < W
    win = 2 * R + 1
    for d in range(win * win):
        dy = d // win - R
        dx = d % win - R
        y2 = y + dy + tl.zeros([BLOCK], dtype=tl.int32)  # row as a vector: masks stay vectors
        x2 = xs + dx
        m = xmask & (x2 >= 0) & (x2 < W) & (y2 >= 0) & (y2 < H)
        acc = tl.zeros([BLOCK], dtype=out.dtype.element_ty)
        for c in range(C):
            base = (b * C + c) * H
            a = tl.load(f1 + (base + y) * W + xs, mask=xmask, other=0.0)
            v = tl.load(f2 + (base + y2) * W + x2, mask=m, other=0.0)
            acc += a * v
        tl.store(out + ((b * win * win + d) * H + y) * W + xs, acc / C, mask=xmask)


@triton.jit
def _corr_bwd_kernel(grad, f1, f2, g1, g2, C, H, W, R: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # (b * C + c) * H + y
    y = row % H
    bc = row // H
    c = bc % C
    b = bc // C
    xs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    xmask = xs < W
    win = 2 * R + 1
    nd = win * win
    acc1 = tl.zeros([BLOCK], dtype=g1.dtype.element_ty)
    acc2 = tl.zeros([BLOCK], dtype=g2.dtype.element_ty)
    base = (b * C + c) * H
    for d in range(nd):
        dy = d // win - R
        dx = d % win - R
        # ∂/∂f1[y, x]: g[d, y, x] · f2[y+dy, x+dx]
        yp = y + dy + tl.zeros([BLOCK], dtype=tl.int32)
        xp = xs + dx
        mp = xmask & (xp >= 0) & (xp < W) & (yp >= 0) & (yp < H)
        gd = tl.load(grad + ((b * nd + d) * H + y) * W + xs, mask=xmask, other=0.0)
        v2 = tl.load(f2 + (base + yp) * W + xp, mask=mp, other=0.0)
        acc1 += gd * v2
        # ∂/∂f2[y, x]: g[d, y−dy, x−dx] · f1[y−dy, x−dx]
        ym = y - dy + tl.zeros([BLOCK], dtype=tl.int32)
        xm = xs - dx
        mm = xmask & (xm >= 0) & (xm < W) & (ym >= 0) & (ym < H)
        gm = tl.load(grad + ((b * nd + d) * H + ym) * W + xm, mask=mm, other=0.0)
        v1 = tl.load(f1 + (base + ym) * W + xm, mask=mm, other=0.0)
        acc2 += gm * v1
    tl.store(g1 + (base + y) * W + xs, acc1 / C, mask=xmask)
    tl.store(g2 + (base + y) * W + xs, acc2 / C, mask=xmask)


def correlation_forward(f1: Tensor, f2: Tensor, r: int) -> Tensor:
    dt = _compute_dtype(f1)
    a, v = f1.to(dt).contiguous(), f2.to(dt).contiguous()
    b, c, h, w = a.shape
    out = torch.empty(b, (2 * r + 1) ** 2, h, w, device=a.device, dtype=dt)
    _corr_fwd_kernel[(b * h, triton.cdiv(w, _BLOCK))](a, v, out, c, h, w, R=r, BLOCK=_BLOCK)
    return out.to(f1.dtype)


def correlation_backward(grad: Tensor, f1: Tensor, f2: Tensor, r: int) -> tuple[Tensor, Tensor]:
    dt = _compute_dtype(f1)
    g, a, v = grad.to(dt).contiguous(), f1.to(dt).contiguous(), f2.to(dt).contiguous()
    b, c, h, w = a.shape
    g1 = torch.empty_like(a)
    g2 = torch.empty_like(v)
    _corr_bwd_kernel[(b * c * h, triton.cdiv(w, _BLOCK))](g, a, v, g1, g2, c, h, w, R=r, BLOCK=_BLOCK)
    return g1.to(f1.dtype), g2.to(f2.dtype)


# ------------------------------------------------------------------------------------- summation splat
@triton.jit
def _splat_corners(flow, b, p, H, W):
    """Where pixels ``p`` (flat, image ``b``) land, p + F(p), and its 4 bilinear corners 00, 10, 01, 11:
    the in-image mask of p, the fractional offsets (ax, ay), each corner's flat index, its in-image mask
    and its weight (1−ax)(1−ay), ax(1−ay), (1−ax)ay, ax·ay."""
    n = H * W
    pm = p < n
    fx = tl.load(flow + (b * 2) * n + p, mask=pm, other=0.0)
    fy = tl.load(flow + (b * 2 + 1) * n + p, mask=pm, other=0.0)
    tx = p % W + fx
    ty = p // W + fy
    x0f = tl.floor(tx)
    y0f = tl.floor(ty)
    ax = tx - x0f
    ay = ty - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    v00 = pm & (x0 >= 0) & (x0 < W) & (y0 >= 0) & (y0 < H)
    v10 = pm & (x1 >= 0) & (x1 < W) & (y0 >= 0) & (y0 < H)
    v01 = pm & (x0 >= 0) & (x0 < W) & (y1 >= 0) & (y1 < H)
    v11 = pm & (x1 >= 0) & (x1 < W) & (y1 >= 0) & (y1 < H)
    return (pm, ax, ay, y0 * W + x0, y0 * W + x1, y1 * W + x0, y1 * W + x1, v00, v10, v01, v11,
            (1 - ax) * (1 - ay), ax * (1 - ay), (1 - ax) * ay, ax * ay)


@triton.jit
def _splat_fwd_kernel(x, flow, out, C, H, W, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = H * W
    pm, ax, ay, i00, i10, i01, i11, v00, v10, v01, v11, w00, w10, w01, w11 = _splat_corners(flow, b, p, H, W)
    for c in range(C):
        base = (b * C + c) * n
        val = tl.load(x + base + p, mask=pm, other=0.0)
        tl.atomic_add(out + base + i00, val * w00, mask=v00)
        tl.atomic_add(out + base + i10, val * w10, mask=v10)
        tl.atomic_add(out + base + i01, val * w01, mask=v01)
        tl.atomic_add(out + base + i11, val * w11, mask=v11)


@triton.jit
def _splat_bwd_kernel(grad, x, flow, gx, gflow, C, H, W, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = H * W
    pm, ax, ay, i00, i10, i01, i11, v00, v10, v01, v11, w00, w10, w01, w11 = _splat_corners(flow, b, p, H, W)
    accx = tl.zeros([BLOCK], dtype=gflow.dtype.element_ty)
    accy = tl.zeros([BLOCK], dtype=gflow.dtype.element_ty)
    for c in range(C):
        base = (b * C + c) * n
        g00 = tl.load(grad + base + i00, mask=v00, other=0.0)
        g10 = tl.load(grad + base + i10, mask=v10, other=0.0)
        g01 = tl.load(grad + base + i01, mask=v01, other=0.0)
        g11 = tl.load(grad + base + i11, mask=v11, other=0.0)
        val = tl.load(x + base + p, mask=pm, other=0.0)
        tl.store(gx + base + p, w00 * g00 + w10 * g10 + w01 * g01 + w11 * g11, mask=pm)
        accx += val * (-(1 - ay) * g00 + (1 - ay) * g10 - ay * g01 + ay * g11)
        accy += val * (-(1 - ax) * g00 - ax * g10 + (1 - ax) * g01 + ax * g11)
    tl.store(gflow + (b * 2) * n + p, accx, mask=pm)
    tl.store(gflow + (b * 2 + 1) * n + p, accy, mask=pm)


def sum_splat_forward(x: Tensor, flow: Tensor) -> Tensor:
    dt = _compute_dtype(x)
    xs, fl = x.to(dt).contiguous(), flow.to(dt).contiguous()
    b, c, h, w = xs.shape
    out = torch.zeros_like(xs)
    _splat_fwd_kernel[(b, triton.cdiv(h * w, _BLOCK))](xs, fl, out, c, h, w, BLOCK=_BLOCK)
    return out.to(x.dtype)


def sum_splat_backward(grad: Tensor, x: Tensor, flow: Tensor) -> tuple[Tensor, Tensor]:
    dt = _compute_dtype(x)
    g, xs, fl = grad.to(dt).contiguous(), x.to(dt).contiguous(), flow.to(dt).contiguous()
    b, c, h, w = xs.shape
    gx = torch.empty_like(xs)
    gf = torch.empty_like(fl)
    _splat_bwd_kernel[(b, triton.cdiv(h * w, _BLOCK))](g, xs, fl, gx, gf, c, h, w, BLOCK=_BLOCK)
    return gx.to(x.dtype), gf.to(flow.dtype)
