"""Output losses over nested outputs: a model that returns a dict, tuple or list of tensors (a frame and
its flows, a main and an auxiliary head) is compared leaf by leaf.

``leafwise(loss, pred, target) = (1/n) Σ_k loss(pred_k, target_k)`` over the n floating-point tensor leaves
that ``pred`` and ``target`` hold at the same place (same dict keys, same sequence positions); with one
tensor each it is ``loss(pred, target)``. Integer tensors (indices, masks) and non-tensor leaves are not
compared. Structures that differ are an error naming the place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = ["leafwise", "leaf_pairs"]


def leaf_pairs(pred: Any, target: Any,
               where: str = "output") -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(place, pred leaf, target leaf)`` for every floating-point tensor leaf, in order."""
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        if not (isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor)):
            raise TypeError(f"{where}: the student gives {type(pred).__name__}, the reference "
                            f"{type(target).__name__}; both must be tensors here")
        if pred.is_floating_point() or pred.is_complex():
            yield where, pred, target
        return
    if isinstance(pred, Mapping):
        if not isinstance(target, Mapping) or set(pred) != set(target):
            keys = sorted(map(str, target)) if isinstance(target, Mapping) else type(target).__name__
            raise TypeError(f"{where}: the student gives keys {sorted(map(str, pred))}, the reference {keys}")
        for k in pred:
            yield from leaf_pairs(pred[k], target[k], f"{where}[{k!r}]")
        return
    if isinstance(pred, tuple | list):
        if not isinstance(target, tuple | list) or len(pred) != len(target):
            n = len(target) if isinstance(target, tuple | list) else type(target).__name__
            raise TypeError(f"{where}: the student gives {len(pred)} items, the reference {n}")
        for k, (p, t) in enumerate(zip(pred, target)):
            yield from leaf_pairs(p, t, f"{where}[{k}]")


def leafwise(loss: Callable[[Any, Any], torch.Tensor], pred: Any, target: Any) -> torch.Tensor:
    """``loss`` on two tensors, or the mean of ``loss`` over the matching leaves of nested outputs."""
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
        return loss(pred, target)
    pairs = list(leaf_pairs(pred, target))
    if not pairs:
        raise TypeError(f"output: no floating-point tensor to compare in the student's "
                        f"{type(pred).__name__} output")
    total = loss(pairs[0][1], pairs[0][2])
    for _, p, t in pairs[1:]:
        total = total + loss(p, t)
    return total / len(pairs)
