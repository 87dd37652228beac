"""The AdaCoF sampling operator as a ``torch.library`` custom op: ``compresskit_vfi::adacof``.

    out[b,c,i,j] = Σ_{k,l<F} W[b,kF+l,i,j] · S(x[b,c], i + k·d + α[b,kF+l,i,j], j + l·d + β[b,kF+l,i,j])

(Lee et al., "AdaCoF: Adaptive Collaboration of Flows for Video Frame Interpolation", CVPR 2020.) ``x`` is
already replicate-padded by (F−1)·d in total per spatial dimension. S is bilinear sampling with the
published kernel's conventions, kept exactly so that official checkpoints give the published outputs: the
integer part of an offset is truncated toward zero, the fraction is offset − trunc(offset) (negative
fractions extrapolate), and each of the four integer tap coordinates is clamped to the padded image.

Differences from the published op, on purpose: the backward returns the *true* gradients of this forward
for all four inputs and every channel (the published one returns zero for the image and sums the W/α/β
gradients over channels 0–2 only). The gradient with respect to α and β is the derivative of the bilinear
form in the fraction (piecewise; the kinks at integer offsets get the right-hand slope).

One call warps any number of channels: the coordinates and bilinear weights are computed once per tap and
pixel and shared by every channel, so CDFI warps its 3-channel frame and its feature pyramid in one call by
concatenating them along channels (twelve warps become two).

Kernels: pure PyTorch on CPU (``adacof_cpu``), Triton on CUDA (``adacof_triton``, imported only when CUDA
and Triton are present). The backward is a custom op of its own, so ``torch.fx`` (``ck.trace``),
``torch.export`` and ``torch.compile`` see single nodes.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from compresskit_vfi.ops.adacof_cpu import adacof_backward_cpu, adacof_forward_cpu

__all__ = ["adacof", "adacof_padding", "triton_available"]


@torch.library.custom_op("compresskit_vfi::adacof", mutates_args=())
def _adacof(x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int) -> Tensor:
    return adacof_forward_cpu(x, weight, alpha, beta, dilation)


@torch.library.custom_op("compresskit_vfi::adacof_backward", mutates_args=())
def _adacof_backward(grad_out: Tensor, x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int,
                     need_x: bool, need_kernel: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return adacof_backward_cpu(grad_out, x, weight, alpha, beta, dilation, need_x, need_kernel)


@_adacof.register_fake
def _adacof_fake(x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int) -> Tensor:
    # shape relations are checked eagerly by ``adacof``; here only what cannot specialise symbolic sizes
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "adacof: x and weight must be 4-D")
    return x.new_empty(x.shape[0], x.shape[1], weight.shape[2], weight.shape[3])


@_adacof_backward.register_fake
def _adacof_backward_fake(grad_out: Tensor, x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor,
                          dilation: int, need_x: bool, need_kernel: bool
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return tuple(torch.empty_like(t) for t in (x, weight, alpha, beta))  # type: ignore[return-value]


def _setup_context(ctx, inputs, output) -> None:
    x, weight, alpha, beta, dilation = inputs
    ctx.save_for_backward(x, weight, alpha, beta)
    ctx.dilation = dilation


def _backward(ctx, grad_out: Tensor):
    x, weight, alpha, beta = ctx.saved_tensors
    need = ctx.needs_input_grad
    gx, gw, ga, gb = torch.ops.compresskit_vfi.adacof_backward(
        grad_out.contiguous(), x, weight, alpha, beta, ctx.dilation, bool(need[0]), bool(any(need[1:4])))
    return (gx if need[0] else None, gw if need[1] else None, ga if need[2] else None,
            gb if need[3] else None, None)


_adacof.register_autograd(_backward, setup_context=_setup_context)


def triton_available() -> bool:
    """True when the CUDA kernels can be used (a CUDA device and the ``triton`` package)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


if triton_available():  # pragma: no cover - needs a GPU
    from compresskit_vfi.ops.adacof_triton import adacof_backward_triton, adacof_forward_triton

    _adacof.register_kernel("cuda")(adacof_forward_triton)
    _adacof_backward.register_kernel("cuda")(adacof_backward_triton)
elif torch.cuda.is_available():  # pragma: no cover - a GPU without Triton: correct, through the CPU
    warnings.warn("compresskit_vfi: triton is not installed, the AdaCoF op runs its CPU kernel for CUDA "
                  "tensors (slow); pip install triton", stacklevel=2)

    def _via_cpu(fn):
        def run(*args):
            device = next(a.device for a in args if isinstance(a, Tensor))
            out = fn(*(a.cpu() if isinstance(a, Tensor) else a for a in args))
            return out.to(device) if isinstance(out, Tensor) else tuple(o.to(device) for o in out)

        return run

    _adacof.register_kernel("cuda")(_via_cpu(adacof_forward_cpu))
    _adacof_backward.register_kernel("cuda")(_via_cpu(adacof_backward_cpu))


def adacof_padding(kernel_size: int, dilation: int) -> int:
    """Total padding (F−1)·d per spatial dimension that ``x`` must carry (half of it on each side)."""
    return (kernel_size - 1) * dilation


def _check(x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int) -> None:
    """Clear errors for wrong shapes, dtypes or devices (also run on fake tensors under export)."""
    names = ("x", "weight", "alpha", "beta")
    for name, t in zip(names, (x, weight, alpha, beta)):
        if not isinstance(t, Tensor):
            raise TypeError(f"adacof: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"adacof: {name} must be 4-D, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"adacof: {name} must be floating point, got {t.dtype}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"adacof: {name} is {t.dtype} on {t.device}, "
                             f"expected x's {x.dtype} on {x.device}")
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"adacof: dilation must be an int >= 1, got {dilation!r}")
    for name, t in zip(names[2:], (alpha, beta)):
        if tuple(t.shape) != tuple(weight.shape):
            raise ValueError(f"adacof: {name} must have weight's shape {tuple(weight.shape)} (B, F², H, W), "
                             f"got {tuple(t.shape)}")
    taps = int(weight.shape[1])
    f = round(taps**0.5)  # exact for any realistic F; unlike math.isqrt, dynamo can trace it on SymInts
    if f * f != taps or taps == 0:
        raise ValueError(f"adacof: weight.shape[1] must be F² (a square number of taps), got {taps}")
    if x.shape[0] != weight.shape[0]:
        raise ValueError(f"adacof: x has batch {x.shape[0]} but weight has batch {weight.shape[0]}")
    pad = adacof_padding(f, dilation)
    # sizes compared without int(): under torch.export int() would fix the spatial sizes for good
    want = (weight.shape[2] + pad, weight.shape[3] + pad)
    if x.shape[2] != want[0] or x.shape[3] != want[1]:
        raise ValueError(f"adacof: x must be padded by (F-1)*dilation = {pad} per spatial dim: expected "
                         f"spatial size {want} for weight's {tuple(weight.shape[2:])} with F={f}, "
                         f"dilation={dilation}, got {tuple(x.shape[2:])}")


def adacof(x: Tensor, weight: Tensor, alpha: Tensor, beta: Tensor, dilation: int = 1) -> Tensor:
    """AdaCoF sampling (see the module docstring): ``x`` (B, C, H+(F−1)d, W+(F−1)d), already padded;
    ``weight``, ``alpha`` (vertical offsets), ``beta`` (horizontal offsets) (B, F², H, W); returns
    (B, C, H, W). Any number of channels in one call (concatenate what shares a kernel set)."""
    if not isinstance(x, torch.fx.Proxy):  # under symbolic tracing the op node itself is recorded
        _check(x, weight, alpha, beta, dilation)
    return torch.ops.compresskit_vfi.adacof(x, weight, alpha, beta, dilation)
