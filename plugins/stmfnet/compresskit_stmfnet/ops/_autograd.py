"""Autograd of a ``torch.library`` op through a second op that computes its gradients.

    op(*inputs) → out;   backward_op(grad, *inputs) → (∂L/∂input_1, ..., ∂L/∂input_n)

The inputs are saved for the backward; gradients of inputs that need none are dropped (``None``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def register_gradient_op(op: Any, backward_op: Any) -> None:
    """Make ``backward_op(grad, *inputs)`` the gradient of the custom op ``op``."""

    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad: Tensor):
        grads = backward_op(grad.contiguous(), *ctx.saved_tensors)
        return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad))

    op.register_autograd(backward, setup_context=setup_context)
