"""PWC-Net cost volume: 9×9 correlation, averaged over channels (Sun et al., CVPR 2018).

    out[b, (dy+4)·9 + (dx+4), y, x] = (1/C) Σ_c f1[b,c,y,x] · f2[b,c,y+dy,x+dx],   dy, dx ∈ [−4, 4]

with f2 read as zero outside the image. One ``torch.library`` custom op (``compresskit_stmfnet::correlation``)
with a pure-PyTorch CPU kernel, a Triton CUDA kernel (loaded only when CUDA is present), a fake kernel and
true gradients through a second custom op (``correlation_backward``):

    ∂L/∂f1[b,c,y,x]  = (1/C) Σ_d g[b,d,y,x] · f2[b,c,y+dy,x+dx]
    ∂L/∂f2[b,c,y,x]  = (1/C) Σ_d g[b,d,y−dy,x−dx] · f1[b,c,y−dy,x−dx]

Channel rule: the 81 output channels are displacements, not features; the op reads every input channel
(they must match between f1 and f2) and produces a fixed 81-channel space.
"""

from __future__ import annotations

import torch
from compresskit_vfi.ops import triton_available
from torch import Tensor

import compresskit as ck
from compresskit_stmfnet.ops._autograd import register_gradient_op

MAX_DISPLACEMENT = 4
WINDOW = 2 * MAX_DISPLACEMENT + 1
N_DISPLACEMENTS = WINDOW * WINDOW  # 81

__all__ = ["correlation", "MAX_DISPLACEMENT", "N_DISPLACEMENTS"]


def _displacements() -> list[tuple[int, int, int]]:
    """(channel, dy, dx) for every displacement, channel = (dy+4)·9 + (dx+4)."""
    r = MAX_DISPLACEMENT
    return [((dy + r) * WINDOW + (dx + r), dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]


def _check(f1: Tensor, f2: Tensor) -> None:
    if not isinstance(f1, Tensor) or f1.dim() != 4:
        raise ValueError(f"correlation: f1 must be a (B,C,H,W) tensor, got {getattr(f1, 'shape', type(f1))}")
    if not isinstance(f2, Tensor) or tuple(f2.shape) != tuple(f1.shape):
        raise ValueError(f"correlation: f2 must have the shape of f1 {tuple(f1.shape)}, "
                         f"got {tuple(getattr(f2, 'shape', ()))}")
    if f1.shape[1] == 0:
        raise ValueError("correlation: f1 and f2 need at least one channel")
    if f1.dtype != f2.dtype or f1.device != f2.device:
        raise ValueError("correlation: f1 and f2 must share dtype and device, got "
                         f"{f1.dtype}/{f1.device} and {f2.dtype}/{f2.device}")


# ---------------------------------------------------------------------------------------------- forward
@torch.library.custom_op("compresskit_stmfnet::correlation", mutates_args=())
def _correlation(f1: Tensor, f2: Tensor) -> Tensor:
    b, c, h, w = f1.shape
    r = MAX_DISPLACEMENT
    f2p = torch.nn.functional.pad(f2, (r, r, r, r))
    out = f1.new_empty(b, N_DISPLACEMENTS, h, w)
    for ch, dy, dx in _displacements():
        out[:, ch] = (f1 * f2p[:, :, r + dy: r + dy + h, r + dx: r + dx + w]).sum(1)
    return out.div_(c)


@_correlation.register_fake
def _(f1: Tensor, f2: Tensor) -> Tensor:
    return f1.new_empty(f1.shape[0], N_DISPLACEMENTS, f1.shape[2], f1.shape[3])


# --------------------------------------------------------------------------------------------- backward
@torch.library.custom_op("compresskit_stmfnet::correlation_backward", mutates_args=())
def _correlation_backward(grad: Tensor, f1: Tensor, f2: Tensor) -> tuple[Tensor, Tensor]:
    b, c, h, w = f1.shape
    r = MAX_DISPLACEMENT
    f2p = torch.nn.functional.pad(f2, (r, r, r, r))
    g1 = torch.zeros_like(f1)
    g2p = torch.zeros_like(f2p)
    for ch, dy, dx in _displacements():
        g = grad[:, ch: ch + 1]
        g1 += g * f2p[:, :, r + dy: r + dy + h, r + dx: r + dx + w]
        g2p[:, :, r + dy: r + dy + h, r + dx: r + dx + w] += g * f1
    return g1.div_(c), g2p[:, :, r: r + h, r: r + w].div(c)


@_correlation_backward.register_fake
def _(grad: Tensor, f1: Tensor, f2: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(f1), torch.empty_like(f2)


register_gradient_op(_correlation, _correlation_backward)


def _setup_context_bw(ctx, inputs, output) -> None:
    grad, f1, f2 = inputs
    ctx.save_for_backward(grad, f1, f2)


def _backward_bw(ctx, u1: Tensor, u2: Tensor):
    """Second derivatives. The backward is linear in grad and in each feature map, so with upstream
    (u1, u2) for (g1, g2): ∂/∂grad = corr(u1, f2) + corr(f1, u2); ∂/∂f1 = bw(grad, f1, u2)[0];
    ∂/∂f2 = bw(grad, u1, f2)[1] (g1 reads only f2, g2 only f1)."""
    grad, f1, f2 = ctx.saved_tensors
    u1 = torch.zeros_like(f1) if u1 is None else u1.contiguous()
    u2 = torch.zeros_like(f2) if u2 is None else u2.contiguous()
    d_grad = _correlation(u1, f2) + _correlation(f1, u2)
    d_f1 = _correlation_backward(grad, f1, u2)[0]
    d_f2 = _correlation_backward(grad, u1, f2)[1]
    return d_grad, d_f1, d_f2


_correlation_backward.register_autograd(_backward_bw, setup_context=_setup_context_bw)


# ------------------------------------------------------------------------------------------------ CUDA
if torch.cuda.is_available() and triton_available():  # pragma: no cover - needs a GPU
    from compresskit_stmfnet.ops import _triton_kernels as _tk

    @_correlation.register_kernel("cuda")
    def _(f1: Tensor, f2: Tensor) -> Tensor:
        return _tk.correlation_forward(f1.contiguous(), f2.contiguous(), MAX_DISPLACEMENT)

    @_correlation_backward.register_kernel("cuda")
    def _(grad: Tensor, f1: Tensor, f2: Tensor) -> tuple[Tensor, Tensor]:
        return _tk.correlation_backward(grad.contiguous(), f1.contiguous(), f2.contiguous(), MAX_DISPLACEMENT)


def _channel_rule(ctx):
    """Every input channel enters the 1/C average, so none can be dropped exactly; the 81 output
    channels are displacements (fixed)."""
    ctx.freeze_all_inputs("correlation averages over all channels (1/C): no channel can be dropped exactly")
    out = ctx.fresh(N_DISPLACEMENTS)
    ctx.freeze(out, "correlation output channels are displacements, read by meaning")
    return ctx.tracked(1, out)


def register_rules() -> None:
    """The correlation op's channel rule (everything it reads and writes is frozen)."""
    ck.register_rule(torch.ops.compresskit_stmfnet.correlation, _channel_rule)


def correlation(f1: Tensor, f2: Tensor) -> Tensor:
    """9×9 cost volume (B,81,H,W) between feature maps ``f1`` and ``f2`` (B,C,H,W), averaged over C."""
    if not isinstance(f1, torch.fx.Proxy):  # under symbolic tracing the op node is recorded
        _check(f1, f2)
    return _correlation(f1.contiguous(), f2.contiguous())
