"""Correlation and summation/softmax splatting against naive float64 loops, gradcheck, opcheck, CUDA."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from compresskit_stmfnet.ops import correlation, softmax_splat, sum_splat

D = torch.float64


def naive_correlation(f1, f2, r=4):
    b, c, h, w = f1.shape
    out = torch.zeros(b, (2 * r + 1) ** 2, h, w, dtype=D)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            s = sum(float(f1[bi, k, y, x]) * float(f2[bi, k, yy, xx]) for k in range(c))
                            out[bi, (dy + r) * (2 * r + 1) + dx + r, y, x] = s / c
    return out


def naive_splat(x, flow):
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h, w, dtype=D)
    for bi in range(b):
        for y in range(h):
            for xx in range(w):
                tx = xx + float(flow[bi, 0, y, xx])
                ty = y + float(flow[bi, 1, y, xx])
                x0, y0 = math.floor(tx), math.floor(ty)
                for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
                    wgt = (1 - abs(tx - cx)) * (1 - abs(ty - cy))
                    if 0 <= cx < w and 0 <= cy < h:
                        out[bi, :, cy, cx] += wgt * x[bi, :, y, xx]
    return out


def test_correlation_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, 3, 5, 10, dtype=D, generator=g)
    f2 = torch.randn(2, 3, 5, 10, dtype=D, generator=g)
    torch.testing.assert_close(correlation(f1, f2), naive_correlation(f1, f2))


def test_correlation_gradients_are_true():
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(1, 2, 5, 6, dtype=D, generator=g, requires_grad=True)
    f2 = torch.randn(1, 2, 5, 6, dtype=D, generator=g, requires_grad=True)
    # fast mode: random projections of the 81-channel output instead of its full Jacobian
    assert torch.autograd.gradcheck(correlation, (f1, f2), fast_mode=True)
    assert torch.autograd.gradgradcheck(correlation, (f1, f2), fast_mode=True)


def test_sum_splat_matches_naive_loop_and_drops_outside_corners():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 5, 6, dtype=D, generator=g)
    flow = torch.randn(2, 2, 5, 6, dtype=D, generator=g) * 3  # many corners land outside
    out = sum_splat(x, flow)
    torch.testing.assert_close(out, naive_splat(x, flow))
    # zero flow is the identity; a shift by one pixel drops the last column
    torch.testing.assert_close(sum_splat(x, torch.zeros_like(flow)), x)
    shift = torch.zeros_like(flow)
    shift[:, 0] = 1.0
    moved = sum_splat(x, shift)
    torch.testing.assert_close(moved[..., 1:], x[..., :-1])
    assert moved[..., 0].abs().max() == 0


def test_splat_gradients_are_true():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, dtype=D, generator=g, requires_grad=True)
    flow = (torch.rand(1, 2, 4, 5, dtype=D, generator=g) * 3 - 1.5).requires_grad_()
    z = torch.randn(1, 1, 4, 5, dtype=D, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(sum_splat, (x, flow))
    assert torch.autograd.gradcheck(softmax_splat, (x, flow, z))


def test_softmax_splat_is_weighted_average():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 4, 4, dtype=D, generator=g)
    flow = torch.zeros(1, 2, 4, 4, dtype=D)
    flow[0, 0, 0, 0] = 1.0  # pixel (0,0) lands exactly on (0,1), which also keeps its own pixel
    z = torch.randn(1, 1, 4, 4, dtype=D, generator=g)
    out = softmax_splat(x, flow, z)
    e0, e1 = z[0, 0, 0, 0].exp(), z[0, 0, 0, 1].exp()
    torch.testing.assert_close(out[0, :, 0, 1], (e0 * x[0, :, 0, 0] + e1 * x[0, :, 0, 1]) / (e0 + e1))
    assert out[0, :, 0, 0].abs().max() == 0  # nothing lands there
    torch.testing.assert_close(out[0, :, 1:], x[0, :, 1:])


def test_opcheck_and_bad_inputs():
    x = torch.randn(1, 3, 4, 5)
    flow = torch.randn(1, 2, 4, 5)
    torch.library.opcheck(torch.ops.compresskit_stmfnet.sum_splat.default, (x, flow))
    torch.library.opcheck(torch.ops.compresskit_stmfnet.correlation.default, (x, x.clone()))
    with pytest.raises(ValueError, match="flow"):
        sum_splat(x, flow[:, :1])
    with pytest.raises(ValueError, match="f2"):
        correlation(x, x[:, :2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - needs a GPU
    g = torch.Generator().manual_seed(5)
    f1, f2 = torch.randn(2, 5, 9, 13, generator=g), torch.randn(2, 5, 9, 13, generator=g)
    x, flow = torch.randn(2, 3, 9, 13, generator=g), torch.randn(2, 2, 9, 13, generator=g) * 3
    for fn, args in ((correlation, (f1, f2)), (sum_splat, (x, flow))):
        cpu_args = [a.clone().requires_grad_() for a in args]
        gpu_args = [a.cuda().requires_grad_() for a in args]
        out_c, out_g = fn(*cpu_args), fn(*gpu_args)
        torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-5)
        w = torch.randn_like(out_c)
        gc = torch.autograd.grad((out_c * w).sum(), cpu_args)
        gg = torch.autograd.grad((out_g * w.cuda()).sum(), gpu_args)
        for a, b in zip(gc, gg):
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_triton_kernels_in_interpreter_match_cpu_kernels():
    """The CUDA kernels' code, run on CPU tensors by Triton's interpreter (no GPU needed)."""
    code = textwrap.dedent("""
        import torch
        from compresskit_stmfnet.ops import _triton_kernels as tk
        from compresskit_stmfnet.ops.correlation import _correlation, _correlation_backward
        from compresskit_stmfnet.ops.softsplat import _sum_splat, _sum_splat_backward
        g = torch.Generator().manual_seed(0)
        for dt in (torch.float64,):  # float32 runs the same code (the interpreter is slow)
            tol = dict(rtol=1e-12, atol=1e-12)
            f1, f2 = (torch.randn(1, 2, 3, 6, generator=g, dtype=dt) for _ in range(2))
            out = tk.correlation_forward(f1, f2, 4)
            torch.testing.assert_close(out, _correlation(f1, f2), **tol)
            gr = torch.randn_like(out)
            for u, v in zip(tk.correlation_backward(gr, f1, f2, 4), _correlation_backward(gr, f1, f2)):
                torch.testing.assert_close(u, v, **tol)
            x = torch.randn(2, 3, 5, 7, generator=g, dtype=dt)
            flow = torch.randn(2, 2, 5, 7, generator=g, dtype=dt) * 3
            out = tk.sum_splat_forward(x, flow)
            torch.testing.assert_close(out, _sum_splat(x, flow), **tol)
            gr = torch.randn_like(out)
            for u, v in zip(tk.sum_splat_backward(gr, x, flow), _sum_splat_backward(gr, x, flow)):
                torch.testing.assert_close(u, v, **tol)
        print("OK")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
