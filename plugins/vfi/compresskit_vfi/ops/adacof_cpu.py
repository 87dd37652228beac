"""CPU kernels of the AdaCoF sampling operator, in pure PyTorch.

Formula (Lee et al., "AdaCoF", CVPR 2020; conventions of the published CUDA kernel)::

    out[b,c,i,j] = Σ_{k,l<F} W[b,kF+l,i,j] · S(x[b,c], i + k·d + α[b,kF+l,i,j], j + l·d + β[b,kF+l,i,j])

S is bilinear sampling whose integer part is the offset truncated toward zero (A = trunc(α)), with
fraction a = α − A (negative for negative offsets: the four taps are then A, A+1 and the sampling
extrapolates) and each of the four integer tap coordinates clamped to the padded image on its own.

How the kernels are fast: the op is a sparse linear map ``out = M·x`` with 4·F² non-zeros per output pixel
(tap index and weight ``W·bilinear``), the same for every channel. Coordinates and weights are computed
once per tap and pixel for a band of output rows, and the channel dimension rides along as the row of a
channels-last table. The image is replicate-padded by one more pixel on every side: padded row p holds
image row R(p) = clamp(p − 1, 0, H − 1). With p0 = clamp(y0, −1, H − 1) + 1, R(p0) = clamp(y0, 0, H − 1)
and R(p0 + 1) = clamp(y0 + 1, 0, H − 1) for every y0 (the same for columns), so "each corner clamped on
its own" needs one index per tap: the four corners are that index into four views of the table shifted
by 0, 1, Wp+2 and Wp+3 rows.

* forward ``M·x``: four ``embedding_bag`` calls (a weighted sum of gathered rows per output pixel), one
  per corner, with the tap index and that corner's ``W·bilinear`` weight;
* grad of W, α, β: ``G_q = <grad_out[p], x_q[tap]>`` for every tap and corner, a sampled dense-dense
  product (``torch.sparse.sampled_addmm`` over the pattern of the taps), then the derivatives of the
  bilinear form;
* grad of x ``Mᵀ·grad_out``: the taps sorted once by image position, then the same ``embedding_bag`` per
  corner into the padded gradient, whose extra ring is folded back onto the border (the adjoint of the
  replicate pad).

Nothing of size (B, C, F², H, W) is ever materialised; memory per band is bounded by ``_BAND_ENTRIES``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

# entries (pixel × tap) handled per band: bounds the temporary memory (about 50 bytes per entry in the
# float32 forward, 90-150 in the backward: 12-40 MB a band; a band is never less than one output row)
_BAND_ENTRIES = 1 << 18


class _Taps:
    """Tap tables of one band of output rows (n pixels, T = F² taps).

    ``index`` (n, T): row of each tap's corner (y0, x0) in the (B·(Hp+2)·(Wp+2), C) table of the image
    padded by one more pixel (corner (y1, x0) is ``index + Wp+2``, (y0, x1) ``index + 1``, (y1, x1)
    ``index + Wp+3``); ``coef`` (4, n, T): ``W · bilinear weight`` of each corner, in that order;
    ``w``, ``fa``, ``fb`` (n, T): the weight and the fractions of the vertical and horizontal offsets.
    """

    def __init__(self, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, b: int, r0: int,
                 r1: int, dilation: int, hp: int, wp: int, index_dtype: torch.dtype):
        taps = weight.shape[1]
        f = int(round(taps**0.5))
        width = weight.shape[3]
        n = (r1 - r0) * width
        # (rows, W, T) with the tap dim innermost: the layout the bags need; every later pass is contiguous
        w = weight[b, :, r0:r1].permute(1, 2, 0).contiguous()
        # copies always (never the caller's tensor: they are changed in place below)
        a = alpha[b, :, r0:r1].permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
        be = beta[b, :, r0:r1].permute(1, 2, 0).clone(memory_format=torch.contiguous_format)
        # offsets beyond the image only ever read the border; bounding them keeps the integer cast defined
        a.clamp_(-(hp + 1), hp + 1)
        be.clamp_(-(wp + 1), wp + 1)
        ia, ib = a.to(index_dtype), be.to(index_dtype)  # the C cast: truncation toward zero
        fa, fb = a.sub_(ia), be.sub_(ib)  # the fractions, in place of the offsets
        tap = torch.arange(taps, device=w.device)
        k_off = ((tap // f) * dilation).to(index_dtype)
        l_off = ((tap % f) * dilation).to(index_dtype)
        # y0 + 1 in the padded table: clamp(y0, −1, hp−1) + 1, the same for x
        rows = torch.arange(r0 + 1, r1 + 1, device=w.device, dtype=index_dtype).view(-1, 1, 1) + k_off
        cols = torch.arange(1, width + 1, device=w.device, dtype=index_dtype).view(1, -1, 1) + l_off
        y = ia.add_(rows).clamp_(0, hp)
        x = ib.add_(cols).clamp_(0, wp)
        index = y.mul_(wp + 2).add_(x)
        if b:
            index += b * (hp + 2) * (wp + 2)
        wa = w * fa  # W·a
        w1a = w - wa  # W·(1−a)
        fb1 = 1 - fb
        coef = torch.empty(4, *w.shape, dtype=w.dtype, device=w.device)
        for q, (wy, wx) in enumerate(((w1a, fb1), (wa, fb1), (w1a, fb), (wa, fb))):
            torch.mul(wy, wx, out=coef[q])
        self.index = index.view(n, taps)
        self.coef = coef.view(4, n, taps)
        self.w, self.fa, self.fb = w.view(n, taps), fa.view(n, taps), fb.view(n, taps)


def _corner_offsets(wp: int) -> tuple[int, int, int, int]:
    """Row offsets of the corners (y0,x0), (y1,x0), (y0,x1), (y1,x1) in the padded table (width wp+2)."""
    return 0, wp + 2, 1, wp + 3


def _bands(height: int, width: int, taps: int):
    rows = max(1, _BAND_ENTRIES // max(1, width * taps))
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


def _padded_rows(x: torch.Tensor) -> torch.Tensor:
    """The image replicate-padded by one pixel per side, as rows (B·(Hp+2)·(Wp+2), C)."""
    return _rows(F.pad(x, (1, 1, 1, 1), mode="replicate"))


def adacof_forward_cpu(x: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                       dilation: int) -> torch.Tensor:
    """``out = Σ_taps W · S(x, ...)`` (see the module docstring); returns (B, C, H, W)."""
    out_dtype = x.dtype
    dt = _compute_dtype(x.dtype)
    x, weight, alpha, beta = (t.to(dt) for t in (x, weight, alpha, beta))
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    table = _padded_rows(x)
    idt = _index_dtype(table.shape[0])
    out = x.new_empty(bsz, height, width, ch)
    for b in range(bsz):
        for r0, r1 in _bands(height, width, taps):
            t = _Taps(weight, alpha, beta, b, r0, r1, dilation, hp, wp, idt)
            acc = out[b, r0:r1].view(-1, ch)
            for q, off in enumerate(_corner_offsets(wp)):
                bag = F.embedding_bag(t.index, table[off:], per_sample_weights=t.coef[q], mode="sum")
                if q:
                    acc += bag
                else:
                    acc.copy_(bag)
    return out.permute(0, 3, 1, 2).contiguous().to(out_dtype)


def _sampled_dots(t: _Taps, grad_rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``G[p, t] = <grad_out[p], table[index[p, t]]>`` for every tap t of every pixel p."""
    n, taps = t.index.shape
    # (the kernel wants no more non-zeros per row than columns: a shifted table keeps at least
    # (Hp+1)·(Wp+2) − 1 > F² rows, since Hp ≥ F)
    crow = torch.arange(0, n * taps + 1, taps, dtype=t.index.dtype, device=t.index.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, t.index.view(-1), t.w.new_zeros(n * taps),
                                          size=(n, table.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, grad_rows, table.t(), beta=0.0)
    return dots.values().view(n, taps)


def _scatter_rows(t: _Taps, grad_rows: torch.Tensor, grad_table: torch.Tensor, offsets: tuple[int, ...]
                  ) -> None:
    """``grad_table += Mᵀ · grad_rows`` for the band: the taps sorted once by table row, then one bag per
    corner into the gradient's rows shifted by that corner's offset."""
    n, taps = t.index.shape
    flat = t.index.view(-1)
    lo, hi = int(flat.min()), int(flat.max())
    order = torch.argsort(flat - lo, stable=True)
    counts = torch.bincount(flat - lo, minlength=hi - lo + 1)
    bag_offsets = torch.zeros(hi - lo + 2, dtype=torch.int64, device=flat.device)
    torch.cumsum(counts, 0, out=bag_offsets[1:])
    source = torch.div(order, taps, rounding_mode="floor")
    for q, off in enumerate(offsets):
        grad_table[lo + off:hi + off + 1] += F.embedding_bag(
            source, grad_rows, bag_offsets, mode="sum", include_last_offset=True,
            per_sample_weights=t.coef[q].reshape(-1).index_select(0, order))


def _unpad_grad(grad_table: torch.Tensor, bsz: int, ch: int, hp: int, wp: int) -> torch.Tensor:
    """The adjoint of the one-pixel replicate pad: the ring's gradient added onto the border it copies."""
    g = grad_table.view(bsz, hp + 2, wp + 2, ch)
    rows = torch.arange(hp + 2, device=g.device).sub_(1).clamp_(0, hp - 1)
    cols = torch.arange(wp + 2, device=g.device).sub_(1).clamp_(0, wp - 1)
    g = g.new_zeros(bsz, hp, wp + 2, ch).index_add_(1, rows, g)
    g = g.new_zeros(bsz, hp, wp, ch).index_add_(2, cols, g)
    return g.permute(0, 3, 1, 2).contiguous()


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
    table = _padded_rows(x)
    grad_rows_all = _rows(grad_out)
    idt = _index_dtype(table.shape[0])
    offsets = _corner_offsets(wp)
    grad_table = torch.zeros_like(table)
    grads = [torch.zeros_like(t) for t in (weight, alpha, beta)]
    if need_x or need_kernel:
        for b in range(bsz):
            for r0, r1 in _bands(height, width, taps):
                t = _Taps(weight, alpha, beta, b, r0, r1, dilation, hp, wp, idt)
                start = (b * height + r0) * width
                grad_rows = grad_rows_all[start:start + (r1 - r0) * width]
                if need_x:
                    _scatter_rows(t, grad_rows, grad_table, offsets)
                if need_kernel:
                    g00, g10, g01, g11 = (_sampled_dots(t, grad_rows, table[off:]) for off in offsets)
                    fa1, fb1 = 1 - t.fa, 1 - t.fb
                    d_w = fa1 * (fb1 * g00 + t.fb * g01) + t.fa * (fb1 * g10 + t.fb * g11)
                    d_a = t.w * (fb1 * (g10 - g00) + t.fb * (g11 - g01))
                    d_b = t.w * (fa1 * (g01 - g00) + t.fa * (g11 - g10))
                    for dst, src in zip(grads, (d_w, d_a, d_b)):
                        dst[b, :, r0:r1] = src.view(r1 - r0, width, taps).permute(2, 0, 1)
    grad_x = _unpad_grad(grad_table, bsz, ch, hp, wp)
    return (grad_x.to(dtypes[0]), *(g.to(d) for g, d in zip(grads, dtypes[1:])))
