"""Parameter counts, and the one reading of ``example_inputs`` every measurement shares."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["count_params", "as_inputs"]


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"count_params: model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters())


def as_inputs(example_inputs: Any) -> tuple:
    """``example_inputs`` as the tuple of the model's positional inputs (one tensor becomes a 1-tuple)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs)
    raise TypeError("example_inputs: expected a tensor or a tuple of the model's positional inputs, "
                    f"got {type(example_inputs).__name__}")
