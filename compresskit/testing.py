"""Test helpers for users and plugins: ``assert_shrink_exact`` is the zero-invariance check.

Shrinking is exact when the small model computes the same function as the original whose dropped
channels are *zeroed where they are consumed* (the weight columns of every layer that reads them). The
check draws a random keep-set for every prunable group, shrinks, builds that zeroed reference
independently of the surgery (it only zeroes, never removes), and compares outputs in float64.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compresskit.graph.channels import ChannelGraph
from compresskit.graph.trace import trace
from compresskit.surgery.surgery import consumed_members, shrink, validate_keep


@dataclass
class ShrinkCheck:
    """What :func:`assert_shrink_exact` checked."""

    groups: int
    prunable: int
    shrunk_groups: int
    params_before: int
    params_after: int
    max_rel_error: float
    dtype: str
    method: str
    keep: dict[int, torch.Tensor] = field(repr=False, default_factory=dict)

    @property
    def params_removed(self) -> int:
        return self.params_before - self.params_after


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _to(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple | list):
        return type(x)(_to(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, dtype) for k, v in x.items()}
    return x


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def random_keep(graph: ChannelGraph, keep_fraction: float = 0.5, seed: int = 0) -> dict[int, torch.Tensor]:
    """For every prunable group of two or more units, a sorted random subset of ``round(size *
    keep_fraction)`` units (at least one, at most ``size - 1``)."""
    if not 0.0 < keep_fraction < 1.0:
        raise ValueError(f"keep_fraction: expected a number in (0, 1), got {keep_fraction!r}")
    gen = torch.Generator().manual_seed(seed)
    keep = {}
    for g in graph.groups:
        if g.prunable and g.size >= 2:
            k = min(g.size - 1, max(1, round(g.size * keep_fraction)))
            keep[g.id] = torch.sort(torch.randperm(g.size, generator=gen)[:k]).values
    return keep


def zeroed_reference(model: nn.Module, graph: ChannelGraph, keep: dict[int, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` whose weights that consume dropped channels are zero there."""
    ref = copy.deepcopy(model)
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for member, gone in consumed_members(graph, validate_keep(graph, keep)):
            if gone.numel():
                t = getattr(modules[member.module], member.tensor)
                t.index_fill_(member.dim, gone.to(t.device), 0.0)
    return ref


def assert_shrink_exact(
    model: nn.Module,
    example_inputs: Any,
    keep_fraction: float = 0.5,
    seed: int = 0,
    *,
    rtol: float = 1e-5,
    graph: ChannelGraph | None = None,
) -> ShrinkCheck:
    """Shrink every prunable group to a random ``keep_fraction`` of its units and check exactness.

    Asserts that (1) the shrunk model's outputs equal those of the original with the dropped channels
    zeroed where consumed, relative error ``||a - b|| / ||b|| <= rtol`` per output tensor (computed in
    float64 when the model runs in float64), (2) it has fewer parameters, (3) it keeps the original's
    module classes and state_dict keys. Returns a :class:`ShrinkCheck`.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if graph is None:
        graph = trace(model, example_inputs)
    keep = random_keep(graph, keep_fraction, seed)
    if not keep:
        raise AssertionError(
            f"no prunable group with two or more channels in {type(model).__name__}:\n"
            + "\n".join(graph.explain(g.id) for g in graph.groups[:5])
        )
    small = shrink(model, graph, keep=keep)
    reference = zeroed_reference(model, graph, keep)

    assert list(small.state_dict().keys()) == list(model.state_dict().keys()), "state_dict keys changed"
    for (n1, m1), (n2, m2) in zip(model.named_modules(), small.named_modules()):
        assert n1 == n2 and type(m1) is type(m2), f"module {n1} changed class or name"
    before, after = _params(model), _params(small)
    assert after < before, f"shrinking removed no parameters ({before} -> {after})"

    outs = None
    for dtype in (torch.float64, torch.float32):
        try:
            s, r = copy.deepcopy(small).to(dtype).eval(), copy.deepcopy(reference).to(dtype).eval()
            inputs = _to(tuple(example_inputs), dtype)
            with torch.no_grad():
                outs = (_tensors(s(*inputs)), _tensors(r(*inputs)))
            break
        except (RuntimeError, NotImplementedError, TypeError):
            if dtype == torch.float32:
                raise
    assert outs is not None
    got, want = outs
    assert len(got) == len(want), f"shrunk model returns {len(got)} tensors, the original {len(want)}"
    worst = 0.0
    for k, (a, b) in enumerate(zip(got, want)):
        assert a.shape == b.shape, f"output {k}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        a, b = a.double(), b.double()
        err = float((a - b).norm() / b.norm().clamp_min(1e-30))
        worst = max(worst, err)
        assert err <= rtol, f"output {k}: relative error {err:.3e} > {rtol:g} after shrinking"
    return ShrinkCheck(
        groups=len(graph.groups),
        prunable=len(graph.prunable_groups),
        shrunk_groups=len(keep),
        params_before=before,
        params_after=after,
        max_rel_error=worst,
        dtype=str(dtype).replace("torch.", ""),
        method=graph.method,
        keep=keep,
    )
