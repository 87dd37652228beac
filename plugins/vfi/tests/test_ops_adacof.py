"""The AdaCoF sampling op against the published formula, written here as a plain loop."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from compresskit_vfi.ops import adacof, adacof_padding
from torch import nn

import compresskit as ck

DT = torch.float64


def reference_adacof(x, weight, alpha, beta, dilation):
    """out[b,c,i,j] = Σ_kl W·S(x, i+k·d+α, j+l·d+β): C-cast truncation, every tap clamped on its own."""
    bsz, ch, hp, wp = x.shape
    taps, height, width = weight.shape[1:]
    f = math.isqrt(taps)

    def clamp(v, n):
        return min(max(v, 0), n - 1)

    out = torch.zeros(bsz, ch, height, width, dtype=x.dtype)
    for b in range(bsz):
        for i in range(height):
            for j in range(width):
                for k in range(f):
                    for l in range(f):
                        t = k * f + l
                        a, be = float(alpha[b, t, i, j]), float(beta[b, t, i, j])
                        ia, ib = int(a), int(be)  # int() truncates toward zero, like the C cast
                        fa, fb = a - ia, be - ib
                        y, xx = i + k * dilation + ia, j + l * dilation + ib
                        s = (x[b, :, clamp(y, hp), clamp(xx, wp)] * (1 - fa) * (1 - fb)
                             + x[b, :, clamp(y + 1, hp), clamp(xx, wp)] * fa * (1 - fb)
                             + x[b, :, clamp(y, hp), clamp(xx + 1, wp)] * (1 - fa) * fb
                             + x[b, :, clamp(y + 1, hp), clamp(xx + 1, wp)] * fa * fb)
                        out[b, :, i, j] += weight[b, t, i, j] * s
    return out


def random_inputs(bsz, ch, height, width, f, dilation, scale=2.5, seed=0, dtype=DT, away_from_integers=False):
    g = torch.Generator().manual_seed(seed)
    pad = adacof_padding(f, dilation)
    x = torch.randn(bsz, ch, height + pad, width + pad, generator=g, dtype=dtype)
    weight = torch.rand(bsz, f * f, height, width, generator=g, dtype=dtype)
    alpha = torch.randn(bsz, f * f, height, width, generator=g, dtype=dtype) * scale
    beta = torch.randn(bsz, f * f, height, width, generator=g, dtype=dtype) * scale
    if away_from_integers:  # keep finite differences off the kinks at integer offsets
        for t in (alpha, beta):
            frac = t - t.round()
            t += torch.where(frac.abs() < 0.05, 0.1 * torch.sign(frac + 1e-12), torch.zeros_like(t))
    return x, weight, alpha, beta


@pytest.mark.parametrize("f, dilation", [(1, 1), (3, 1), (3, 2), (4, 1), (5, 2)])
def test_forward_matches_reference_loop(f, dilation):
    x, w, a, b = random_inputs(2, 3, 4, 5, f, dilation, scale=3.0, seed=f * 10 + dilation)
    a[0, 0, 0, 0], b[0, -1, 1, 1] = -7.25, 9.5  # far outside: clamped to the border
    a[1, 0, 2, 3], b[1, 0, 2, 3] = -0.75, -1.5  # negative fractions: extrapolation
    torch.testing.assert_close(adacof(x, w, a, b, dilation), reference_adacof(x, w, a, b, dilation),
                               rtol=1e-12, atol=1e-12)


def test_published_conventions_by_hand():
    # one tap (F=1), one pixel row of x = r² per row r; α = −0.5 truncates to A = 0 with fraction −0.5,
    # so the taps are rows i and i+1 with weights 1.5 and −0.5 (floor-based bilinear would give rows i−1, i)
    rows = torch.arange(4, dtype=DT) ** 2
    x = rows.view(1, 1, 4, 1).expand(1, 1, 4, 3).contiguous()
    ones = torch.ones(1, 1, 4, 3, dtype=DT)
    out = adacof(x, ones, -0.5 * ones, torch.zeros_like(ones), 1)
    expected = torch.tensor([1.5 * 0 - 0.5 * 1, 1.5 * 1 - 0.5 * 4, 1.5 * 4 - 0.5 * 9, 1.5 * 9 - 0.5 * 9])
    torch.testing.assert_close(out[0, 0, :, 0], expected.to(DT))  # last row: tap i+1 clamped to row 3
    # a whole-pixel offset of +2.0 on the last row reads the clamped border row
    out = adacof(x, 2 * ones, 2.0 * ones, torch.zeros_like(ones), 1)
    torch.testing.assert_close(out[0, 0, :, 1], 2 * torch.tensor([4.0, 9.0, 9.0, 9.0], dtype=DT))


@pytest.mark.parametrize("f, dilation, ch", [(3, 1, 4), (2, 2, 5)])
def test_gradcheck_all_inputs(f, dilation, ch):
    inputs = [t.requires_grad_() for t in random_inputs(1, ch, 3, 4, f, dilation, away_from_integers=True)]
    assert torch.autograd.gradcheck(lambda *t: adacof(*t, dilation), inputs, eps=1e-6, atol=1e-7)


def test_gradients_match_autograd_of_reference():
    x, w, a, b = random_inputs(1, 5, 3, 3, 3, 1, seed=3)
    grad = torch.randn(1, 5, 3, 3, dtype=DT)
    ours = torch.autograd.grad(adacof(*(t.requires_grad_() for t in (x, w, a, b)), 1), (x, w, a, b), grad)

    def differentiable_reference(x, w, a, b):
        # the same formula with tensors: fractions a − trunc(a) carry the offsets' gradient
        ia, ib = a.detach().trunc(), b.detach().trunc()
        fa, fb = a - ia, b - ib
        hp, wp = x.shape[2:]
        out = torch.zeros(1, 5, 3, 3, dtype=DT)
        for t in range(9):
            k, l = divmod(t, 3)
            for i in range(3):
                for j in range(3):
                    y, xx = i + k + int(ia[0, t, i, j]), j + l + int(ib[0, t, i, j])
                    cy = [min(max(v, 0), hp - 1) for v in (y, y + 1)]
                    cx = [min(max(v, 0), wp - 1) for v in (xx, xx + 1)]
                    p, q = fa[0, t, i, j], fb[0, t, i, j]
                    s = (x[0, :, cy[0], cx[0]] * (1 - p) * (1 - q) + x[0, :, cy[1], cx[0]] * p * (1 - q)
                         + x[0, :, cy[0], cx[1]] * (1 - p) * q + x[0, :, cy[1], cx[1]] * p * q)
                    out[0, :, i, j] = out[0, :, i, j] + w[0, t, i, j] * s
        return out

    leaves = [t.detach().requires_grad_() for t in (x, w, a, b)]
    ref = torch.autograd.grad(differentiable_reference(*leaves), leaves, grad)
    for name, o, r in zip(("x", "weight", "alpha", "beta"), ours, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-10, msg=f"gradient of {name}")
    # all channels count: the published op summed channels 0-2 only and returned no image gradient
    assert ours[0].abs().sum() > 0


def test_only_requested_gradients_are_returned():
    x, w, a, b = random_inputs(1, 2, 3, 3, 3, 1, seed=4)
    w.requires_grad_()
    (g_w,) = torch.autograd.grad(adacof(x, w, a, b, 1).sum(), (w,))
    x2, w2 = x.clone().requires_grad_(), w.detach().clone().requires_grad_()
    g_x2, g_w2 = torch.autograd.grad(adacof(x2, w2, a, b, 1).sum(), (x2, w2))
    torch.testing.assert_close(g_w, g_w2)
    assert g_x2.abs().sum() > 0


def test_bands_of_one_row_match_the_reference_and_leave_inputs_unchanged(monkeypatch):
    # the CPU kernel works band by band; with bands of one output row every band boundary, the batch
    # offset into the padded table and the border ring's gradient are exercised; F = 1 makes the taps'
    # layout a view of the caller's tensors (the kernel must copy before it changes anything in place)
    from compresskit_vfi.ops import adacof_cpu

    monkeypatch.setattr(adacof_cpu, "_BAND_ENTRIES", 1)
    for f, dilation in [(1, 1), (3, 2)]:
        x, w, a, b = random_inputs(2, 2, 3, 4, f, dilation, scale=3.0, seed=11, away_from_integers=True)
        a[0, 0, 0, 0], b[1, -1, 2, 3] = -9.5, 8.25  # beyond the image on the top and on the right
        kept = [t.clone() for t in (x, w, a, b)]
        torch.testing.assert_close(adacof(x, w, a, b, dilation), reference_adacof(x, w, a, b, dilation),
                                   rtol=1e-12, atol=1e-12)
        leaves = [t.requires_grad_() for t in (x, w, a, b)]
        grad = torch.randn(2, 2, 3, 4, dtype=DT)
        grad_kept = grad.clone()
        torch.autograd.grad(adacof(*leaves, dilation), leaves, grad)  # the backward builds its own taps
        for before, after in zip([*kept, grad_kept], (x, w, a, b, grad)):
            assert torch.equal(before, after.detach())
        assert torch.autograd.gradcheck(lambda *t, d=dilation: adacof(*t, d), leaves, eps=1e-6, atol=1e-7)
        # the int64 index path (taken for tables of 2³¹ rows or more) computes the same
        monkeypatch.setattr(adacof_cpu, "_index_dtype", lambda numel: torch.int64)
        torch.testing.assert_close(adacof(x, w, a, b, dilation).detach(), reference_adacof(
            *(t.detach() for t in (x, w, a, b)), dilation), rtol=1e-12, atol=1e-12)
        monkeypatch.undo()
        monkeypatch.setattr(adacof_cpu, "_BAND_ENTRIES", 1)


def test_opcheck():
    inputs = [t.float().requires_grad_() for t in random_inputs(2, 3, 4, 5, 3, 2, seed=5)]
    result = torch.library.opcheck(torch.ops.compresskit_vfi.adacof.default, (*inputs, 2))
    assert all(v == "SUCCESS" for v in result.values()), result


def test_float32_and_bfloat16_agree_with_float64():
    x, w, a, b = random_inputs(1, 6, 8, 9, 5, 2, seed=6)
    ref = adacof(x, w, a, b, 2)
    torch.testing.assert_close(adacof(*(t.float() for t in (x, w, a, b)), 2).double(), ref,
                               rtol=1e-5, atol=1e-5)
    low_inputs = [t.bfloat16() for t in (x, w, a, b)]
    low = adacof(*low_inputs, 2)
    assert low.dtype == torch.bfloat16
    # computed in float32 and rounded once: within bfloat16's rounding of the exact result of its inputs
    exact = adacof(*(t.double() for t in low_inputs), 2)
    torch.testing.assert_close(low.double(), exact, rtol=2**-7, atol=1e-3)


def test_many_channels_in_one_call_equal_separate_calls():
    x, w, a, b = random_inputs(2, 7, 6, 6, 3, 2, seed=7)
    together = adacof(x, w, a, b, 2)
    apart = torch.cat([adacof(x[:, :3], w, a, b, 2), adacof(x[:, 3:], w, a, b, 2)], 1)
    torch.testing.assert_close(together, apart, rtol=0, atol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, w, a, b: (x[..., 1:], w, a, b, 2), "padded by"),
        (lambda x, w, a, b: (x, w[:, :8], a[:, :8], b[:, :8], 2), "square number"),
        (lambda x, w, a, b: (x, w, a[:, :, 1:], b, 2), "alpha must have weight's shape"),
        (lambda x, w, a, b: (x, w, a, b, 0), "dilation must be an int"),
        (lambda x, w, a, b: (x, w.float(), a, b, 2), "weight is torch.float32"),
        (lambda x, w, a, b: (x[0], w, a, b, 2), "x must be 4-D"),
    ],
)
def test_bad_input_gives_clear_error(change, message):
    args = change(*random_inputs(1, 2, 4, 4, 3, 2))
    with pytest.raises((ValueError, TypeError), match=message):
        adacof(*args)


class _Warp(nn.Module):
    """A conv makes features, another the kernel set; the op warps the features; a conv reads them."""

    def __init__(self, f=3, dilation=2):
        super().__init__()
        self.f, self.d = f, dilation
        self.features = nn.Conv2d(3, 8, 3, padding=1)
        self.kernels = nn.Conv2d(3, 3 * f * f, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, frame):
        w, a, b = self.kernels(frame).chunk(3, dim=1)
        pad = adacof_padding(self.f, self.d) // 2
        feats = F.pad(self.features(frame), [pad] * 4, mode="replicate")
        return self.head(adacof(feats, w.softmax(1), a, b, self.d))


def test_export_sees_one_node():
    ep = torch.export.export(_Warp().eval(), (torch.rand(1, 3, 8, 8),))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.compresskit_vfi.adacof.default) == 1
    assert not any("gather" in str(t) or "index" in str(t) for t in targets)


def test_plain_fx_symbolic_trace_sees_one_node():
    model = _Warp().eval()
    gm = torch.fx.symbolic_trace(model)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("compresskit_vfi.adacof" in str(t) for t in targets) == 1
    frame = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(gm(frame), model(frame))


def test_compile_fullgraph_without_breaks():
    model = _Warp().eval()
    frame = torch.rand(1, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(frame), model(frame))


def test_channel_rule_passes_image_channels_and_freezes_taps():
    model = _Warp().eval()
    graph = ck.trace(model, (torch.rand(1, 3, 8, 8),))
    by_producer = {p: g for g in graph.groups for p in g.producers}
    feats, kernels = by_producer["features"], by_producer["kernels"]
    assert feats.prunable and "head" in feats.consumers and feats.size == 8
    assert not kernels.prunable
    assert any("read by meaning" in r for r in kernels.reasons)


def test_shrinking_through_the_op_is_exact():
    # dropping feature channels = zeroing them where the op's output is consumed
    check = ck.testing.assert_shrink_exact(_Warp().eval(), (torch.rand(1, 3, 8, 8),), keep_fraction=0.5)
    assert check.shrunk_groups == 1 and check.params_after < check.params_before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(dtype):  # pragma: no cover - needs a GPU
    inputs = random_inputs(2, 37, 19, 23, 5, 2, seed=8, dtype=dtype)
    cpu = [t.clone().requires_grad_() for t in inputs]
    gpu = [t.cuda().requires_grad_() for t in inputs]
    out_cpu, out_gpu = adacof(*cpu, 2), adacof(*gpu, 2)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, **tol)
    grad = torch.randn_like(out_cpu)
    g_cpu = torch.autograd.grad(out_cpu, cpu, grad)
    g_gpu = torch.autograd.grad(out_gpu, gpu, grad.cuda())
    for a, b in zip(g_gpu, g_cpu):
        torch.testing.assert_close(a.cpu(), b, **tol)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_triton_kernels_in_interpreter_match_cpu():
    # runs the Triton kernels on CPU tensors with TRITON_INTERPRET=1 (no GPU needed)
    code = textwrap.dedent("""
        import torch
        from compresskit_vfi.ops.adacof_cpu import adacof_forward_cpu, adacof_backward_cpu
        from compresskit_vfi.ops.adacof_triton import adacof_forward_triton, adacof_backward_triton
        torch.manual_seed(0)
        for f, d, c in [(3, 1, 3), (4, 2, 37)]:
            p = (f - 1) * d
            x = torch.randn(2, c, 5 + p, 6 + p, dtype=torch.float64)
            w = torch.rand(2, f * f, 5, 6, dtype=torch.float64)
            a, b = (3 * torch.randn(2, 2 * f * f, 5, 6, dtype=torch.float64)).chunk(2, 1)
            out = adacof_forward_triton(x, w, a, b, d)
            assert torch.allclose(out, adacof_forward_cpu(x, w, a, b, d), atol=1e-12)
            g = torch.randn_like(out)
            for u, v in zip(adacof_backward_triton(g, x, w, a, b, d), adacof_backward_cpu(g, x, w, a, b, d)):
                assert torch.allclose(u, v, atol=1e-12)
        print("OK")
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
