"""CPU kernels of the AdaCoF sampling operator, in pure PyTorch.

Formula (Lee et al., "AdaCoF", CVPR 2020; conventions of the published CUDA kernel)::

    out[b,c,i,j] = Σ_{k,l<F} W[b,kF+l,i,j] · S(x[b,c], i + k·d + α[b,kF+l,i,j], j + l·d + β[b,kF+l,i,j])

S is bilinear sampling whose integer part is the offset truncated toward zero (A = trunc(α)), with
fraction a = α − A (negative for negative offsets: the four taps are then A, A+1 and the sampling
extrapolates) and each of the four integer tap coordinates clamped to the padded image on its own.

How the kernels are fast: the op is a sparse linear map ``out = M·x`` with 4·F² non-zeros per output pixel
(tap index and weight ``W·bilinear``), the same for every channel. Coordinates and weights are computed
once per tap and pixel for a band of output rows, and the channel dimension rides along as the row of a
channels-last table:

* forward ``M·x``: one ``embedding_bag`` (a weighted sum of gathered rows per output pixel);
* grad of W, α, β: ``G = <grad_out[p], x[tap]>`` for every non-zero, a sampled dense-dense product
  (``torch.sparse.sampled_addmm`` over the pattern of ``M``), then the derivatives of the bilinear form;
* grad of x ``Mᵀ·grad_out``: the non-zeros sorted by image position, then the same ``embedding_bag``.

Nothing of size (B, C, F², H, W) is ever materialised; memory per band is bounded by ``_BAND_ENTRIES``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# entries (pixel × tap × corner) handled per band: bounds the temporary memory (~20 bytes per entry)
_BAND_ENTRIES = 1 << 20


class _Taps:
    """Tap tables of one band of output rows (n pixels, T = F² taps, 4 bilinear corners).

    ``index`` (n, T·4): flat row of each corner in the (B·Hp·Wp, C) channels-last image;
    ``coef`` (n, T·4): ``W · bilinear weight`` of each corner; ``w``, ``fa``, ``fb`` (n, T): the weight and
    the fractions of the vertical and horizontal offsets. Corner order: (y0,x0), (y1,x0), (y0,x1), (y1,x1).
    """

    def __init__(self, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, b: int, r0: int,
                 r1: int, dilation: int, hp: int, wp: int, index_dtype: torch.dtype):
        taps = weight.shape[1]
        f = int(round(taps**0.5))
        width = weight.shape[3]
        # (rows, W, T) with the tap dim innermost: the layout the bags need, built without later copies
        w = weight[b, :, r0:r1].permute(1, 2, 0).contiguous()
        a = alpha[b, :, r0:r1].permute(1, 2, 0).contiguous()
        be = beta[b, :, r0:r1].permute(1, 2, 0).contiguous()
        # offsets beyond the image only ever read the border; bounding them keeps the integer cast defined
        a = a.clamp(-(hp + 1), hp + 1)
        be = be.clamp(-(wp + 1), wp + 1)
        ia, ib = a.to(index_dtype), be.to(index_dtype)  # the C cast: truncation toward zero
        fa, fb = a - ia, be - ib
        tap = torch.arange(taps, device=w.device)
        k_off = ((tap // f) * dilation).to(index_dtype)
        l_off = ((tap % f) * dilation).to(index_dtype)
        rows = torch.arange(r0, r1, device=w.device, dtype=index_dtype).view(-1, 1, 1)
        cols = torch.arange(width, device=w.device, dtype=index_dtype).view(1, -1, 1)
        y0 = ia.add_(rows + k_off)
        x0 = ib.add_(cols + l_off)
        y1 = (y0 + 1).clamp_(0, hp - 1).mul_(wp)
        y0 = y0.clamp_(0, hp - 1).mul_(wp)
        x1 = (x0 + 1).clamp_(0, wp - 1)
        x0 = x0.clamp_(0, wp - 1)
        if b:
            base = b * hp * wp
            y0 += base
            y1 += base
        n = (r1 - r0) * width
        self.index = torch.stack([y0 + x0, y1 + x0, y0 + x1, y1 + x1], -1).view(n, taps * 4)
        wa = w * fa
        w1a = w - wa
        fb1 = 1 - fb
        self.coef = torch.stack([w1a * fb1, wa * fb1, w1a * fb, wa * fb], -1).view(n, taps * 4)
        self.w, self.fa, self.fb = w.view(n, taps), fa.view(n, taps), fb.view(n, taps)


def _bands(height: int, width: int, taps: int):
    rows = max(1, _BAND_ENTRIES // max(1, width * taps * 4))
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # the sparse kernels run in float32/float64; half precision inputs are computed in float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 - 1 else torch.int64


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> channels-last rows (B·H·W, C)."""
    b, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).contiguous().view(b * h * w, c)


def adacof_forward_cpu(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                       dilation: int) -> torch.Tensor:
    """``out = Σ_taps W · S(x, ...)`` (see the module docstring); returns (B, C, H, W)."""
    out_dtype = x.dtype
    dt = _compute_dtype(x.dtype)
    x, weight, alpha, beta = (t.to(dt) for t in (x, weight, alpha, beta))
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    x_rows = _rows(x)
    idt = _index_dtype(x_rows.shape[0])
    out = x.new_empty(bsz, height, width, ch)
    for b in range(bsz):
        for r0, r1 in _bands(height, width, taps):
            t = _Taps(weight, alpha, beta, b, r0, r1, dilation, hp, wp, idt)
            bag = F.embedding_bag(t.index, x_rows, per_sample_weights=t.coef, mode="sum")
            out[b, r0:r1] = bag.view(r1 - r0, width, ch)
    return out.permute(0, 3, 1, 2).contiguous().to(out_dtype)


def _sampled_dots(t: _Taps, grad_rows: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
    """``G[p, e] = <grad_out[p], x_rows[index[p, e]]>`` for every tap corner e of every pixel p."""
    n, entries = t.index.shape
    crow = torch.arange(0, n * entries + 1, entries, dtype=t.index.dtype, device=t.index.device)
    if x_rows.shape[0] < entries:  # the kernel wants no more non-zeros per row than columns
        x_rows = torch.cat([x_rows, x_rows.new_zeros(entries - x_rows.shape[0], x_rows.shape[1])])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, t.index.view(-1), t.coef.new_zeros(n * entries),
                                          size=(n, x_rows.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad_rows, x_rows.t(), beta=0.0)
    return dots.values().view(n, entries)


def _scatter_rows(t: _Taps, grad_rows: torch.Tensor, grad_x_rows: torch.Tensor) -> None:
    """``grad_x_rows += Mᵀ · grad_rows`` for the band: sort the non-zeros by image row, then one bag each."""
    n, entries = t.index.shape
    flat = t.index.view(-1)
    lo, hi = int(flat.min()), int(flat.max())
    order = torch.argsort(flat - lo, stable=True)
    counts = torch.bincount(flat - lo, minlength=hi - lo + 1)
    offsets = torch.zeros(hi - lo + 2, dtype=torch.int64, device=flat.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    source = torch.div(order, entries, rounding_mode="floor")
    grad_x_rows[lo:hi + 1] += F.embedding_bag(source, grad_rows, offsets, mode="sum",
                                              per_sample_weights=t.coef.view(-1).index_select(0, order),
                                              include_last_offset=True)


def adacof_backward_cpu(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor,
                        beta: torch.Tensor, dilation: int, need_x: bool = True, need_kernel: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """True gradients of the forward for x, weight, alpha, beta (zeros where not needed).

    With G_q = Σ_c grad_out·x[corner q] and fractions a, b of α, β (corners 00, 10, 01, 11 = (y0,x0),
    (y1,x0), (y0,x1), (y1,x1))::

        ∂/∂W = (1−a)(1−b)G00 + a(1−b)G10 + (1−a)b G01 + ab G11
        ∂/∂α = W·[(1−b)(G10 − G00) + b(G11 − G01)]      (the derivative of the fraction is 1)
        ∂/∂β = W·[(1−a)(G01 − G00) + a(G11 − G10)]
        ∂/∂x = Σ over pixels and taps of grad_out · W · bilinear weight, scattered to the four corners.
    """
    dtypes = [t.dtype for t in (x, weight, alpha, beta)]
    dt = _compute_dtype(x.dtype)
    grad_out, x, weight, alpha, beta = (t.to(dt) for t in (grad_out, x, weight, alpha, beta))
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    x_rows = _rows(x)
    grad_rows_all = _rows(grad_out)
    idt = _index_dtype(x_rows.shape[0])
    grad_x_rows = torch.zeros_like(x_rows)
    grads = [torch.zeros_like(t) for t in (weight, alpha, beta)]
    if need_x or need_kernel:
        for b in range(bsz):
            for r0, r1 in _bands(height, width, taps):
                t = _Taps(weight, alpha, beta, b, r0, r1, dilation, hp, wp, idt)
                start = (b * height + r0) * width
                grad_rows = grad_rows_all[start:start + (r1 - r0) * width]
                if need_x:
                    _scatter_rows(t, grad_rows, grad_x_rows)
                if need_kernel:
                    g = _sampled_dots(t, grad_rows, x_rows).view(-1, taps, 4)
                    g00, g10, g01, g11 = g.unbind(-1)
                    fa1, fb1 = 1 - t.fa, 1 - t.fb
                    d_w = fa1 * (fb1 * g00 + t.fb * g01) + t.fa * (fb1 * g10 + t.fb * g11)
                    d_a = t.w * (fb1 * (g10 - g00) + t.fb * (g11 - g01))
                    d_b = t.w * (fa1 * (g01 - g00) + t.fa * (g11 - g10))
                    for dst, src in zip(grads, (d_w, d_a, d_b)):
                        dst[b, :, r0:r1] = src.view(r1 - r0, width, taps).permute(2, 0, 1)
    grad_x = grad_x_rows.view(bsz, hp, wp, ch).permute(0, 3, 1, 2).contiguous()
    return (grad_x.to(dtypes[0]), *(g.to(d) for g, d in zip(grads, dtypes[1:])))
