"""Multiply-accumulates (MACs) of one forward pass, counted as the heavy torch calls run.

A conv contributes ``C_out · C_in/groups · k_h · k_w`` per output pixel and sample, a transposed conv
``C_out/groups · k_h · k_w`` per *input* pixel, a linear map ``in_features`` per output element, a
matrix product ``K`` per output element, attention ``Q·Kᵀ`` plus ``softmax(·)·V``. Element-wise ops,
norms and custom ops are not counted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from compresskit._modes import eval_mode
from compresskit.measure.counts import as_inputs

__all__ = ["count_macs", "macs_of", "call_arg", "WEIGHTED_CALLS"]


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs``.

    Every convolution, transposed convolution, linear map, matrix product and attention call is counted
    as it runs (module or functional, through a ``TorchFunctionMode``): a conv contributes
    ``C_out · C_in/groups · k_h · k_w`` per output pixel and sample, a transposed conv ``C_out/groups ·
    k_h · k_w`` per *input* pixel, a linear map ``in_features`` per output element. Element-wise ops,
    norms and custom ops are not counted.
    """
    inputs = as_inputs(example_inputs)
    counter = _MacCounter()
    with eval_mode(model), torch.no_grad(), counter:
        model(*inputs)
    return counter.total


def call_arg(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    """Argument ``index`` (positional) or ``name`` (keyword) of a torch call."""
    return args[index] if len(args) > index else kwargs.get(name)


class _MacCounter(TorchFunctionMode):
    """Adds up the MACs of the heavy torch calls made inside it (nested calls are not seen twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.total += macs_of(func, args, kwargs, out)
        return out


_F = torch.nn.functional
#: the calls whose second argument is a weight (their MACs scale with its size)
WEIGHTED_CALLS = (_F.conv1d, _F.conv2d, _F.conv3d, _F.conv_transpose1d, _F.conv_transpose2d,
                  _F.conv_transpose3d, _F.linear)
_MATMULS = (torch.matmul, torch.mm, torch.bmm, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.bmm,
            torch.Tensor.__matmul__, torch.Tensor.__rmatmul__)


def macs_of(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """MACs of one torch call ``func(*args, **kwargs) -> out`` (0 for a call that is not counted)."""
    F = _F
    if func in (F.conv1d, F.conv2d, F.conv3d):  # weight (C_out, C_in/g, *k): one kernel per output
        return out.numel() * call_arg(args, kwargs, 1, "weight")[0].numel()
    if func in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):  # (C_in, C_out/g, *k)
        return call_arg(args, kwargs, 0, "input").numel() * call_arg(args, kwargs, 1, "weight")[0].numel()
    if func is F.linear:
        return out.numel() * call_arg(args, kwargs, 1, "weight").shape[-1]
    if func in _MATMULS:
        a = args[0] if func is not torch.Tensor.__rmatmul__ else args[1]
        return out.numel() * (a.shape[-1] if a.dim() > 0 else 1)
    if func is F.scaled_dot_product_attention:  # Q·Kᵀ and softmax(·)·V
        q, k, v = (call_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
        scores = q.numel() // q.shape[-1] * k.shape[-2]
        return scores * q.shape[-1] + scores * v.shape[-1]
    if func is F.multi_head_attention_forward:  # (L, N, E) inputs: 4 projections, Q·Kᵀ, attention·V
        query, key = call_arg(args, kwargs, 0, "query"), call_arg(args, kwargs, 1, "key")
        n_q, n_k, embed = query.shape[0], key.shape[0], query.shape[-1]
        batch = query.shape[1] if query.dim() == 3 else 1
        return batch * ((2 * n_q + 2 * n_k) * embed * embed + 2 * n_q * n_k * embed)
    return 0
