"""CUDA kernels of the AdaCoF sampling operator, written in Triton.

Imported only when CUDA and Triton are both present (see ``compresskit_vfi.ops.adacof``). Same formula
and conventions as ``adacof_cpu`` (truncation toward zero, every tap clamped to the padded image).

* forward: one program per (block of pixels, block of channels, image); the taps are looped, and each
  tap's coordinates and bilinear weights are computed once and shared by the channel block;
* backward: one program per (block of pixels, image); for each tap the channel blocks are looped,
  ``G = Σ_c grad_out · x[corner]`` is reduced in registers (the W/α/β gradients, all channels) and the
  image gradient is scattered with atomic adds (so the order of additions, and the last bits of grad x,
  may vary from run to run).

Accumulation is in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _tap(w_ptr, a_ptr, b_ptr, k_base, t, hw, mask_p, i, j, HP, WP, F, DIL, ACC: tl.constexpr):
    """Weight, fractions and the four clamped flat corner positions of tap ``t`` for a block of pixels."""
    wv = tl.load(w_ptr + k_base + t * hw, mask=mask_p, other=0.0).to(ACC)
    av = tl.load(a_ptr + k_base + t * hw, mask=mask_p, other=0.0).to(ACC)
    bv = tl.load(b_ptr + k_base + t * hw, mask=mask_p, other=0.0).to(ACC)
    # offsets past the image only read the border; bounding them keeps the float->int cast defined
    lim_a = HP + 1.0  # float arithmetic: also right when Triton specialises a size of 1 to a constant
    lim_b = WP + 1.0
    av = tl.minimum(tl.maximum(av, -lim_a), lim_a)
    bv = tl.minimum(tl.maximum(bv, -lim_b), lim_b)
    ai = av.to(tl.int32)  # fptosi: truncation toward zero, the C cast of the published kernel
    bi = bv.to(tl.int32)
    fa = av - ai.to(ACC)
    fb = bv - bi.to(ACC)
    k = t // F
    l = t % F
    y0 = i + k * DIL + ai
    x0 = j + l * DIL + bi
    y1 = tl.minimum(tl.maximum(y0 + 1, 0), HP - 1) * WP
    y0 = tl.minimum(tl.maximum(y0, 0), HP - 1) * WP
    x1 = tl.minimum(tl.maximum(x0 + 1, 0), WP - 1)
    x0 = tl.minimum(tl.maximum(x0, 0), WP - 1)
    return wv, fa, fb, y0 + x0, y1 + x0, y0 + x1, y1 + x1


@triton.jit
def _adacof_fwd_kernel(x_ptr, w_ptr, a_ptr, b_ptr, out_ptr, C, H, W, HP, WP, TAPS, F, DIL,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    img = tl.program_id(2).to(tl.int64)
    hw = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < hw
    mask = mask_p[:, None] & (offs_c < C)[None, :]
    i = offs_p // W
    j = offs_p % W
    x_img = x_ptr + img * C * HP * WP + offs_c[None, :].to(tl.int64) * (HP * WP)
    k_base = img * TAPS * hw + offs_p
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for t in range(0, TAPS):
        wv, fa, fb, p00, p10, p01, p11 = _tap(w_ptr, a_ptr, b_ptr, k_base, t, hw, mask_p, i, j, HP, WP, F,
                                              DIL, ACC)
        wa = wv * fa
        w1a = wv - wa
        fb1 = 1.0 - fb
        v00 = tl.load(x_img + p00[:, None], mask=mask, other=0.0).to(ACC)
        v10 = tl.load(x_img + p10[:, None], mask=mask, other=0.0).to(ACC)
        v01 = tl.load(x_img + p01[:, None], mask=mask, other=0.0).to(ACC)
        v11 = tl.load(x_img + p11[:, None], mask=mask, other=0.0).to(ACC)
        acc += ((w1a * fb1)[:, None] * v00 + (wa * fb1)[:, None] * v10
                + (w1a * fb)[:, None] * v01 + (wa * fb)[:, None] * v11)
    out = out_ptr + img * C * hw + offs_c[None, :].to(tl.int64) * hw + offs_p[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adacof_bwd_kernel(go_ptr, x_ptr, w_ptr, a_ptr, b_ptr, gx_ptr, gw_ptr, ga_ptr, gb_ptr,
                       C, H, W, HP, WP, TAPS, F, DIL,
                       NEED_X: tl.constexpr, NEED_KERNEL: tl.constexpr,
                       BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    pid_p = tl.program_id(0)
    img = tl.program_id(1).to(tl.int64)
    hw = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < hw
    i = offs_p // W
    j = offs_p % W
    k_base = img * TAPS * hw + offs_p
    for t in range(0, TAPS):
        wv, fa, fb, p00, p10, p01, p11 = _tap(w_ptr, a_ptr, b_ptr, k_base, t, hw, mask_p, i, j, HP, WP, F,
                                              DIL, ACC)
        fa1 = 1.0 - fa
        fb1 = 1.0 - fb
        g00 = tl.zeros((BLOCK_P,), dtype=ACC)
        g10 = tl.zeros((BLOCK_P,), dtype=ACC)
        g01 = tl.zeros((BLOCK_P,), dtype=ACC)
        g11 = tl.zeros((BLOCK_P,), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask = mask_p[:, None] & (offs_c < C)[None, :]
            go = tl.load(go_ptr + img * C * hw + offs_c[None, :].to(tl.int64) * hw + offs_p[:, None],
                         mask=mask, other=0.0).to(ACC)
            plane = img * C * HP * WP + offs_c[None, :].to(tl.int64) * (HP * WP)
            if NEED_KERNEL:
                x_img = x_ptr + plane
                g00 += tl.sum(go * tl.load(x_img + p00[:, None], mask=mask, other=0.0).to(ACC), axis=1)
                g10 += tl.sum(go * tl.load(x_img + p10[:, None], mask=mask, other=0.0).to(ACC), axis=1)
                g01 += tl.sum(go * tl.load(x_img + p01[:, None], mask=mask, other=0.0).to(ACC), axis=1)
                g11 += tl.sum(go * tl.load(x_img + p11[:, None], mask=mask, other=0.0).to(ACC), axis=1)
            if NEED_X:
                gx_img = gx_ptr + plane
                wa = wv * fa
                w1a = wv - wa
                tl.atomic_add(gx_img + p00[:, None], go * (w1a * fb1)[:, None], mask=mask)
                tl.atomic_add(gx_img + p10[:, None], go * (wa * fb1)[:, None], mask=mask)
                tl.atomic_add(gx_img + p01[:, None], go * (w1a * fb)[:, None], mask=mask)
                tl.atomic_add(gx_img + p11[:, None], go * (wa * fb)[:, None], mask=mask)
        if NEED_KERNEL:
            d_w = fa1 * (fb1 * g00 + fb * g01) + fa * (fb1 * g10 + fb * g11)
            d_a = wv * (fb1 * (g10 - g00) + fb * (g11 - g01))
            d_b = wv * (fa1 * (g01 - g00) + fa * (g11 - g10))
            tl.store(gw_ptr + k_base + t * hw, d_w.to(gw_ptr.dtype.element_ty), mask=mask_p)
            tl.store(ga_ptr + k_base + t * hw, d_a.to(ga_ptr.dtype.element_ty), mask=mask_p)
            tl.store(gb_ptr + k_base + t * hw, d_b.to(gb_ptr.dtype.element_ty), mask=mask_p)


_BLOCK_P = 64


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_c(channels: int) -> int:
    return max(2, min(32, triton.next_power_of_2(channels)))


def adacof_forward_triton(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                          dilation: int) -> torch.Tensor:
    x, weight, alpha, beta = (t.contiguous() for t in (x, weight, alpha, beta))
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    out = torch.empty(bsz, ch, height, width, dtype=x.dtype, device=x.device)
    block_c = _block_c(ch)
    grid = (triton.cdiv(height * width, _BLOCK_P), triton.cdiv(ch, block_c), bsz)
    _adacof_fwd_kernel[grid](x, weight, alpha, beta, out, ch, height, width, hp, wp, taps, math.isqrt(taps),
                             dilation, BLOCK_P=_BLOCK_P, BLOCK_C=block_c, ACC=_acc(x.dtype))
    return out


def adacof_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor,
                           beta: torch.Tensor, dilation: int, need_x: bool = True, need_kernel: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, x, weight, alpha, beta = (t.contiguous() for t in (grad_out, x, weight, alpha, beta))
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    # the image gradient is accumulated with atomics, in float32 at least
    gx_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_x = torch.zeros(x.shape, dtype=gx_dtype, device=x.device)
    grads = [torch.zeros_like(t) for t in (weight, alpha, beta)]
    if need_x or need_kernel:
        grid = (triton.cdiv(height * width, _BLOCK_P), bsz)
        _adacof_bwd_kernel[grid](grad_out, x, weight, alpha, beta, grad_x, *grads, ch, height, width, hp, wp,
                                 taps, math.isqrt(taps), dilation, NEED_X=need_x, NEED_KERNEL=need_kernel,
                                 BLOCK_P=_BLOCK_P, BLOCK_C=_block_c(ch), ACC=_acc(x.dtype))
    return (grad_x.to(x.dtype), *grads)
